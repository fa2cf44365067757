"""pyproject.toml against the source tree."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_packaged():
  """pyproject lists packages by name: a new subpackage left out installs
  nowhere, and only the install tests above (CI) would notice."""
  import tomllib  # pylint: disable=g-import-not-at-top
  listed = set(tomllib.loads((REPO / 'pyproject.toml').read_text())['tool'][
      'setuptools']['packages'])
  found = {'.'.join(p.parent.relative_to(REPO).parts)
           for p in (REPO / 'deeplab_jax').rglob('__init__.py')}
  assert found <= listed, f'not in pyproject.toml: {sorted(found - listed)}'
