"""The command line's persistent compilation cache: on by default in the
cache folder, the user's own folder kept, and an off switch."""

import jax
import pytest

from deeplab_jax import compilation_cache


@pytest.fixture
def jax_cache_config():
  """jax's cache options as the test found them, restored afterwards (the
  suite itself runs with a cache folder of its own)."""
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_compilation_cache_max_size)
  yield
  jax.config.update('jax_compilation_cache_dir', saved[0])
  jax.config.update('jax_compilation_cache_max_size', saved[1])


def test_on_by_default_under_the_cache_folder(jax_cache_config, tmp_path,
                                              monkeypatch):
  monkeypatch.delenv('DEEPLAB_JAX_COMPILATION_CACHE', raising=False)
  jax.config.update('jax_compilation_cache_dir', None)
  jax.config.update('jax_compilation_cache_max_size', -1)
  folder = compilation_cache.enable(str(tmp_path))
  assert folder == str(tmp_path / 'xla')
  assert jax.config.jax_compilation_cache_dir == folder
  assert jax.config.jax_compilation_cache_max_size == 2 * 2**30


def test_the_users_folder_and_limit_are_kept(jax_cache_config, tmp_path,
                                            monkeypatch):
  monkeypatch.delenv('DEEPLAB_JAX_COMPILATION_CACHE', raising=False)
  jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'mine'))
  jax.config.update('jax_compilation_cache_max_size', 123)
  assert compilation_cache.enable(str(tmp_path)) == str(tmp_path / 'mine')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'mine')
  assert jax.config.jax_compilation_cache_max_size == 123


@pytest.mark.parametrize('value', ['0', 'off', 'False'])
def test_switched_off(jax_cache_config, tmp_path, monkeypatch, value):
  monkeypatch.setenv('DEEPLAB_JAX_COMPILATION_CACHE', value)
  jax.config.update('jax_compilation_cache_dir', None)
  assert compilation_cache.enable(str(tmp_path)) is None
  assert jax.config.jax_compilation_cache_dir is None
