"""grain pipelines: determinism, resumable iterators, sharding, eval, no TF."""

import os
import pathlib
import site
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest

from deeplab_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]


def _batches(config, n, **kwargs):
  iterator = iter(pipeline.train_loader(config, **kwargs))
  return [next(iterator) for _ in range(n)]


@pytest.fixture
def small_crop(voc_prepared):
  config, _ = voc_prepared
  config = config.copy_and_resolve_references()
  config.data.crop_size = 65
  return config


def test_train_batches_have_the_model_input_format(small_crop):
  batch = _batches(small_crop, 1, batch_size=4)[0]
  assert batch['image'].shape == (4, 65, 65, 3)
  assert batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['label'].shape == (4, 65, 65) and batch['label'].dtype == np.uint8
  assert set(np.unique(batch['label'])) <= set(range(21)) | {255}


def test_same_seed_same_batches_other_seed_others(small_crop):
  first = _batches(small_crop, 3, batch_size=4, seed=7)
  second = _batches(small_crop, 3, batch_size=4, seed=7)
  other = _batches(small_crop, 3, batch_size=4, seed=8)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_resume_mid_epoch_gives_the_same_next_batch(small_crop):
  iterator = iter(pipeline.train_loader(small_crop, batch_size=4, seed=3))
  for _ in range(3):  # 12 of 26 examples: mid-epoch.
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(5)]  # Crosses the epoch end.
  resumed = iter(pipeline.train_loader(small_crop, batch_size=4, seed=3))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_worker_processes_are_deterministic_and_resumable(small_crop):
  # Each worker batches its own records, so the batch composition depends
  # on worker_count; for a given count it is fixed, and resumable.
  first = _batches(small_crop, 3, batch_size=4, seed=5, worker_count=2)
  iterator = iter(pipeline.train_loader(small_crop, batch_size=4, seed=5,
                                        worker_count=2))
  np.testing.assert_array_equal(next(iterator)['image'], first[0]['image'])
  state = iterator.get_state()
  resumed = iter(pipeline.train_loader(small_crop, batch_size=4, seed=5,
                                       worker_count=2))
  resumed.set_state(state)
  for want in first[1:]:
    np.testing.assert_array_equal(next(resumed)['image'], want['image'])


def test_process_shards_are_disjoint(small_crop):
  source = pipeline.data_source(small_crop.data, 'validation')
  names = []
  for index in range(2):
    loader = pipeline.eval_loader(
        small_crop, source=source, worker_count=0,
        shard_options=grain.sharding.ShardOptions(index, 2,
                                                  drop_remainder=False))
    names.append([e['file_name'] for e in loader])
  assert len(names[0]) == len(names[1]) == 3
  assert not set(names[0]) & set(names[1])


def test_eval_examples_keep_every_labelled_pixel(voc_prepared):
  config, _ = voc_prepared
  source = pipeline.data_source(config.data, 'validation')
  seen = 0
  for example in pipeline.eval_loader(config, source=source, worker_count=0):
    raw = source[seen]
    mask = pipeline.augment.decode_mask(raw['segmentation_mask'])
    h, w = mask.shape
    assert (example['height'], example['width']) == (h, w)
    assert example['image'].shape == (513, 513, 3)  # Padded, not cropped.
    np.testing.assert_array_equal(example['label'][:h, :w], mask)
    assert (example['label'] != 255).sum() == (mask != 255).sum()
    seen += 1
  assert seen == 6


def _site_packages_without_tensorflow(tmp_path) -> pathlib.Path:
  """A PYTHONPATH folder linking every installed package except TF."""
  overlay = tmp_path / 'site'
  overlay.mkdir()
  hidden = ('tensorflow', 'tensorflow_cpu', 'tensorflow-', 'tensorboard',
            'tf_keras')
  for entry in pathlib.Path(site.getsitepackages()[0]).iterdir():
    name = entry.name
    if name.startswith(hidden) and not name.startswith(
        ('tensorflow_datasets', 'tensorflow_metadata')):
      continue
    (overlay / name).symlink_to(entry)
  return overlay


def test_pipeline_reads_and_augments_without_tensorflow(voc_prepared,
                                                        tmp_path):
  config, _ = voc_prepared
  overlay = _site_packages_without_tensorflow(tmp_path)
  script = textwrap.dedent(f'''
      import importlib.util, sys
      assert importlib.util.find_spec('tensorflow') is None
      from deeplab_jax.config import default_config
      from deeplab_jax.data import pipeline
      config = default_config()
      config.data.dataset = 'voc2012'
      config.data.data_dir = {config.data.data_dir!r}
      config.data.crop_size = 65
      batch = next(iter(pipeline.train_loader(config, batch_size=2,
                                              worker_count=0)))
      assert batch['image'].shape == (2, 65, 65, 3)
      assert 'tensorflow' not in sys.modules
      print('OK without TensorFlow')
  ''')
  env = dict(os.environ, PYTHONPATH=f'{overlay}{os.pathsep}{REPO}')
  result = subprocess.run([sys.executable, '-S', '-c', script], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK without TensorFlow' in result.stdout


def test_offline_download_fails_at_once_naming_manual_dir(monkeypatch,
                                                         tmp_path):
  """No network: one message in well under a second, not minutes of
  retries by the download manager."""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from deeplab_jax.errors import DatasetError  # pylint: disable=g-import-not-at-top

  def no_dns(host, *args, **kwargs):
    raise socket.gaierror(-3, 'Temporary failure in name resolution')

  monkeypatch.setattr(socket, 'getaddrinfo', no_dns)
  config = default_config()
  config.data.data_dir = str(tmp_path)
  start = time.perf_counter()
  with pytest.raises(DatasetError, match=r'voc2012: cannot reach '
                     r'host.robots.ox.ac.uk.*--config.data.manual_dir'):
    pipeline.prepare_dataset(config.data)
  assert time.perf_counter() - start < 5


@pytest.mark.parametrize('backend,cores,expected', [
    ('cpu', 1, 0), ('cpu', 2, 1), ('cpu', 64, 1),
    ('gpu', 1, 0), ('gpu', 16, 15), ('gpu', 96, pipeline.MAX_AUTO_WORKERS)])
def test_auto_worker_count_follows_the_cores_and_the_backend(
    monkeypatch, backend, cores, expected):
  """-1 (the default): a CPU's train step needs one worker, a GPU's all
  the cores but the main process's; a number is kept as it is."""
  monkeypatch.setattr(pipeline.jax, 'default_backend', lambda: backend)
  monkeypatch.setattr(pipeline.distributed, 'available_cores',
                      lambda: cores)
  assert pipeline.resolve_workers(-1) == expected
  assert pipeline.resolve_workers(3) == 3 and pipeline.resolve_workers(0) == 0
