"""Fixtures that build small TFDS datasets from the VOC sample in ../shared."""

import pathlib
import shutil
import tarfile

import pytest

from deeplab_jax.config import default_config


def voc_config(data_dir, manual_dir=None, dataset='voc2012'):
  config = default_config()
  config.data.dataset = dataset
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir) if manual_dir else None
  config.data.num_workers = 0
  return config


def make_voc_tar(voc_devkit: pathlib.Path, out_dir: pathlib.Path
                 ) -> pathlib.Path:
  """VOCtrainval_11-May-2012.tar holding VOCdevkit/VOC2012/..."""
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / 'VOCtrainval_11-May-2012.tar'
  with tarfile.open(path, 'w') as tar:
    tar.add(voc_devkit, arcname='VOCdevkit')
  return path


@pytest.fixture
def voc_copy(voc_sample_dir, tmp_path) -> pathlib.Path:
  """A writable copy of the sample: tmp/manual/VOCdevkit/VOC2012/..."""
  manual = tmp_path / 'manual'
  shutil.copytree(voc_sample_dir, manual / 'VOCdevkit')
  return manual


@pytest.fixture(scope='session')
def voc_prepared(voc_sample_dir, tmp_path_factory):
  """The sample built once from its folder: (config, builder)."""
  from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('tfds_voc')
  config = voc_config(data_dir, voc_sample_dir.parent)
  return config, pipeline.prepare_dataset(config.data)
