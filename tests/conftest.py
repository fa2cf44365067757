"""Shared test fixtures: paths to ../shared, tiny configs, skips."""

import fcntl
import os
import pathlib
import shutil
import tarfile
import tempfile

os.environ.setdefault('KERAS_BACKEND', 'jax')
# Many tests (and their subprocesses) compile the same train and eval steps:
# share compiled programs through JAX's persistent cache for this run. The
# process that imports this first (pytest itself, or xdist's controller)
# makes the folder and exports it; xdist's workers and the tests'
# subprocesses inherit it, and the same process removes it when pytest
# ends (each run left 36 MB in /tmp before). A folder the user chose with
# JAX_COMPILATION_CACHE_DIR is used and kept.
_OWNED_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWNED_CACHE = tempfile.mkdtemp(prefix='deeplab-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWNED_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# Tests run tiny inputs: compile time dominates. LLVM's optimisations (not
# correctness) are what level 0 skips; XLA:CPU's older fusion emitters
# generate the same computations and compile faster (a tiny MobileNetV2
# train step: 8.3 s -> 7.6 s with level 0, -> 5.8-6.3 s with both).
FAST_COMPILE = ('--xla_backend_optimization_level=0',
                '--xla_cpu_use_fusion_emitters=false')
for _flag in FAST_COMPILE:
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                               _flag).strip()

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  del config  # Unused.
  if _OWNED_CACHE:
    shutil.rmtree(_OWNED_CACHE, ignore_errors=True)


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


def abstract(build):
  """A module's structure and shapes (deeplab_jax.models.jax_compat.abstract:
  nnx.eval_shape with the probe create_model uses; a bare Xception-65
  traced in 2.7 s, 0.6 s with it)."""
  from deeplab_jax.models.jax_compat import abstract as abstract_module  # pylint: disable=g-import-not-at-top
  return abstract_module(build)


def randomize_keras_batch_norm(model, seed, gamma=(0.5, 1.5)):
  """Non-trivial BatchNorm statistics and affines for a Keras model, so that
  a weight mapping that mixes up BN variables shows."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights([
          rng.uniform(*gamma, c), rng.normal(0, 0.2, c),
          rng.normal(0, 0.2, c), rng.uniform(0.5, 1.5, c)
      ])
  return model


def backbone_with_weights(model_config, weights, output_stride=32):
  """The backbone of create_model(model_config) holding `weights` (a
  {('params'|'batch_stats', 'backbone', ...): array} dict, e.g. from
  keras.imagenet_backbone_weights), in inference mode; asserts that every
  array of `weights` was loaded."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from deeplab_jax.weights.tree import copy_matching  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import create_model  # pylint: disable=g-import-not-at-top
  # Abstract (shapes only): the weights fill the whole backbone, and
  # initialising a ResNet-101 first took seconds of compiling.
  model = nnx.eval_shape(lambda: create_model(model_config,
                                              output_stride=output_stride))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats, report = copy_matching(params, stats, weights,
                                        scope='backbone')
  assert report['loaded'] > 0 and not report['skipped']
  assert not report['missing'], report['missing'][:5]
  return nnx.view(nnx.merge(graphdef, params, stats).backbone,
                  use_running_average=True)


def random_keras_mobilenet_v2(alpha, size):
  """keras.applications.MobileNetV2 with random weights and non-trivial
  BatchNorm statistics (KERAS_BACKEND=jax)."""
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.applications.MobileNetV2(
      input_shape=(size, size, 3), alpha=alpha, include_top=False,
      weights=None)
  return randomize_keras_batch_norm(model, int(alpha * 100))


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


def _once_per_run(tmp_path_factory, name: str, build) -> pathlib.Path:
  """A folder `build(folder)` fills once per test run, shared by all
  pytest-xdist workers (the first builds it under a lock, the others wait
  and reuse it): building a dataset in each worker doubled its cost."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # The run's folder, above the per-worker ones.
  folder = root / name
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not (folder / '.built').exists():
      folder.mkdir(exist_ok=True)
      build(folder)
      (folder / '.built').touch()
  return folder


def _prepare(data_config) -> None:
  from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.prepare_dataset(data_config)


@pytest.fixture
def toy_model(monkeypatch):
  """Registers tests/helpers/toy_backbone.py's two-convolution backbone for
  one test and gives `use_toy_model(config)`: for tests of what does not
  depend on the backbone (datasets, the training loop, evaluation), whose
  MobileNetV2 would cost most of their time in building and compiling."""
  from tests.helpers import toy_backbone  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import backbones  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(backbones.BACKBONES, toy_backbone.ToyBackbone.name,
                      toy_backbone.ToyBackbone)
  return toy_backbone.use_toy_model


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
  """The built-in demo dataset, generated once per test run."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top

  def build(data_dir):
    config = default_config()
    config.data.dataset = 'demo'
    config.data.data_dir = str(data_dir)
    _prepare(config.data)

  return _once_per_run(tmp_path_factory, 'tfds_demo', build)


def voc_config(data_dir, manual_dir=None, dataset='voc2012'):
  """A default config reading the VOC sample's TFDS build."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
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
  data_dir = _once_per_run(
      tmp_path_factory, 'tfds_voc', lambda folder: _prepare(voc_config(
          folder, voc_sample_dir.parent).data))
  config = voc_config(data_dir, voc_sample_dir.parent)
  return config, pipeline.prepare_dataset(config.data)  # Built: reads it.


def voc_train_config(data_dir, manual_dir, **train_overrides):
  """A tiny model training on the VOC sample's TFDS build (65 crops)."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.model = tiny_model_config()
  config.data.dataset = 'voc2012'
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir)
  config.data.crop_size = 65
  config.data.num_workers = 0
  config.train.batch_size = 4
  config.train.learning_rate = 0.05
  config.train.num_steps = 30
  config.train.log_every_steps = 5
  config.train.checkpoint_every_steps = 2
  # Train BatchNorm at batch 4 (automatic mode would freeze it below 12).
  config.train.batch_norm_min_batch = 1
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def train_two_steps(config, data_dir, workdir, crop_size):
  """`config` (a shipped config with the test's model) trained for two steps
  of batch 2 on `crop_size` crops and evaluated at step 2, in this process,
  its TFDS build in `data_dir`; returns cli.run's result."""
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  config.data.data_dir = str(data_dir)
  config.data.num_workers = 0
  config.data.crop_size = crop_size
  config.train.batch_size = 2
  config.train.num_steps = 2
  config.train.eval_every_steps = 2
  result = cli.run(config, mode='train', workdir=str(workdir))
  assert result['final_step'] == 2
  return result


# The longest tests and groups (about a minute or more each on two cores),
# started first: pytest-xdist hands tests out in collection order, and a
# long test drawn last would leave one worker idle while the other
# finishes it.
SLOW_FIRST = (
    # The install group, one worker, in order: the venv (about 60 s), then
    # about 180 s of tests; the longest chain, so it starts first.
    'test_no_tensorflow_and_the_command_works_from_any_folder',
    'test_notebook_executes_in_the_colab_install',
    'test_train_eval_predict_without_tensorflow',
    'test_one_device_and_eight_devices_take_the_same_step',
    'test_two_processes_form_one_cluster_and_agree',
    'test_kill_9_at_random_moments_loses_nothing_else',
    'test_fine_tuning_an_official_model_keeps_it',
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.originalname, len(rank)))
