"""The Colab notebook runs top to bottom (smoke setting) and draws."""

import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests import test_install

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'deeplab_jax.ipynb'


def test_colab_badge_and_clone_url_agree():
  """One repository URL: the notebook's REPO_URL and the README's badge."""
  source = ''.join(c.source for c in nbformat.read(NOTEBOOK, as_version=4)
                   .cells if c.cell_type == 'code')
  url = re.search(r"REPO_URL = '(https://github.com/[^']+)'", source)
  assert url, 'the notebook names its repository in REPO_URL'
  badge = re.search(r'colab.research.google.com/github/([^)\s]+)/blob/main/'
                    r'notebooks/deeplab_jax.ipynb',
                    (REPO / 'README.md').read_text())
  assert badge and url.group(1) == 'https://github.com/' + badge.group(1)


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.skipif(test_install.ENABLED, reason='tests/test_install.py '
                    'executes the notebook in the Colab install instead')
def test_notebook_executes_and_every_picture_cell_draws(
    demo_data_dir, shared_models_dir, monkeypatch, capsys):
  del shared_models_dir  # Required: the notebook reads ../shared offline.
  monkeypatch.setenv('DEEPLAB_JAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('TFDS_DATA_DIR', str(demo_data_dir))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  start = time.perf_counter()
  client.execute()  # Raises CellExecutionError if any cell raises.
  with capsys.disabled():
    print(f'\n  notebook executed in {time.perf_counter() - start:.0f} s')
  pictures = [c for c in notebook.cells if 'picture' in c.metadata.get(
      'tags', [])]
  assert len(pictures) >= 6
  for cell in pictures:
    outputs = [o for o in cell.outputs if 'data' in o]
    assert any('image/png' in o['data'] for o in outputs), cell.source[:80]
