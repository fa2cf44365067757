"""Shared test fixtures: paths to ../shared, tiny configs, skips."""

import os
import pathlib

os.environ.setdefault('KERAS_BACKEND', 'jax')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
VOC_SAMPLE = SHARED / 'data' / 'voc2012_sample'
MODELS = SHARED / 'models'


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f'{what} not found at {path}: these tests read the real '
                'material in ../shared beside the repository (CI has it).')
  return path


@pytest.fixture(scope='session')
def voc_sample_dir() -> pathlib.Path:
  """../shared/data/voc2012_sample (its VOCdevkit/ holds 32 real pairs)."""
  return _require(VOC_SAMPLE / 'VOCdevkit', 'The PASCAL VOC 2012 sample')


@pytest.fixture(scope='session')
def shared_models_dir() -> pathlib.Path:
  """../shared/models with the official DeepLab TFLite exports."""
  return _require(MODELS, 'The official DeepLab TFLite models')


def tiny_model_config(**overrides):
  """A small but complete config.model for fast CPU tests."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  m = default_config().model
  m.backbone.depth_multiplier = 0.35
  m.head.channels = 16
  m.head.projection_channels = 16
  m.decoder.low_level_channels = 8
  m.decoder.channels = 16
  for key, value in overrides.items():
    node = m
    *parents, last = key.split('.')
    for p in parents:
      node = node[p]
    node[last] = value
  return m


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
  """The built-in demo dataset, generated once per test session."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('tfds_demo')
  config = default_config()
  config.data.dataset = 'demo'
  config.data.data_dir = str(data_dir)
  pipeline.prepare_dataset(config.data)
  return data_dir
