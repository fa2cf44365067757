"""A short real-data run on the VOC sample: the loss falls; evaluation
during training, after it and under --follow compiles once and writes its
files; prediction writes its files."""

import json
import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from flax import nnx

from deeplab_jax import checkpoints, cli, evaluate
from deeplab_jax.weights import tree
from deeplab_jax.models import create_model
from deeplab_jax.weights import pretrained
from deeplab_jax.data import voc
from deeplab_jax.errors import CheckpointError, ConfigError
from deeplab_jax.models import backbones
from tests.conftest import voc_train_config
from tests.helpers.toy_backbone import ToyBackbone


# One pytest-xdist worker runs this module: its 30-step training fixture
# then runs once, not once per worker.
pytestmark = pytest.mark.xdist_group('voc_run')


@pytest.fixture(autouse=True)
def _toy_backbone_registered(monkeypatch):
  """What these tests check (evaluation, --follow, predict, restore) does
  not depend on the backbone: the run trains the two-convolution
  tests/helpers/toy_backbone.py (the official models' evaluation is
  pinned to LiteRT's in tests/weights/test_pretrained.py)."""
  monkeypatch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)


@pytest.fixture(scope='session')
def voc_run(voc_prepared, tmp_path_factory):
  """30 steps on the 26 VOC sample training images, evaluated on the 6
  val images at steps 15 and 30; then the config."""
  config, _ = voc_prepared
  # The same train program as test_train's resume tests: one compile.
  config = voc_train_config(config.data.data_dir, config.data.manual_dir)
  config.model.backbone = ToyBackbone.default_config()
  config.train.checkpoint_every_steps = 15
  config.train.eval_every_steps = 15
  config.eval.scales = (1.0,)
  config.eval.flip = False
  config.eval.num_result_images = 2
  workdir = tmp_path_factory.mktemp('voc_run')
  with pytest.MonkeyPatch.context() as patch:  # Session-scoped: its own.
    patch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)
    result = cli.run(config, mode='train', workdir=str(workdir))
  return config, workdir, result


def _metrics(workdir, step):
  return json.loads((workdir / 'eval' / f'metrics_{step}.json').read_text())


def test_evaluation_during_training_compiles_once(voc_run):
  config, workdir, result = voc_run
  first, second = _metrics(workdir, 15), _metrics(workdir, 30)
  assert (first['step'], second['step']) == (15, 30)
  assert first['images'] == second['images'] == 6
  # New weights, the same Evaluator: nothing is traced or compiled again.
  assert second['compiles'] == 0, second['compiles']
  assert second['compile_seconds'] == 0.0
  assert result['eval']['step'] == 30
  assert result['eval']['miou'] == pytest.approx(second['miou'])
  # TensorBoard has the eval scalars of both steps.
  assert [int(s) for s in _steps(workdir, 'eval/miou')] == [15, 30]


def _events(workdir, tag):
  """The scalar events TensorBoard reads from `workdir` under `tag`."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(str(workdir))
  accumulator.Reload()
  return accumulator.Scalars(tag)


def _logged(workdir, tag):
  """The values written to TensorBoard under `tag`, in step order."""
  return [e.value for e in _events(workdir, tag)]


def _steps(workdir, tag):
  return [e.step for e in _events(workdir, tag)]


def test_short_training_on_real_voc_lowers_the_loss(voc_run):
  _, workdir, result = voc_run
  assert result['final_step'] == 30
  values = _logged(workdir, 'train/cross_entropy')
  assert len(values) == 6  # Means over 5 steps each.
  # Batches of 4 real images are noisy: compare the last 15 steps with the
  # first 5 (the loss starts near ln 21 = 3.04).
  assert np.mean(values[-3:]) < 0.8 * values[0], values


def test_evaluation_writes_metrics_confusion_and_images(voc_run):
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.crop_size = 513
  config.eval.scales = (0.75, 1.0)
  config.eval.flip = True
  config.eval.batch_size = 4
  config.eval.num_result_images = 3
  summary = cli.run(config, mode='eval', workdir=str(workdir))
  written = json.loads((workdir / 'eval' / 'metrics.json').read_text())
  assert written['images'] == 6 and written['step'] == 30
  assert set(written['per_class_iou']) == set(voc.CLASS_NAMES)
  assert written['miou'] == pytest.approx(summary['miou'])
  # mIoU and accuracy follow from the written confusion matrix (rows: truth).
  confusion = np.asarray(written['confusion_matrix'], np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  present = confusion.sum(1) > 0
  assert written['miou'] == pytest.approx(np.mean(tp[present] /
                                                  union[present]))
  assert written['pixel_accuracy'] == pytest.approx(tp.sum() /
                                                    confusion.sum())
  assert written['pixel_accuracy'] > 0.3  # Background dominates.
  # The confusion matrix counts exactly the labelled pixels of the 6 images.
  labelled = 0
  sample = pathlib.Path(config.data.manual_dir) / 'VOCdevkit' / 'VOC2012'
  for name in (sample / 'ImageSets/Segmentation/val.txt').read_text().split():
    mask = np.asarray(Image.open(sample / 'SegmentationClass' / f'{name}.png'))
    labelled += int((mask != 255).sum())
  assert written['pixels'] == labelled
  assert (workdir / 'eval' / 'confusion_matrix.png').exists()
  panels = sorted((workdir / 'eval' / 'images').glob('*.png'))
  assert len(panels) == 3
  with Image.open(panels[0]) as panel:
    assert panel.width > 3 * panel.height  # image | truth | pred | overlay


def test_predict_skips_non_images_and_writes_masks(voc_run, voc_sample_dir,
                                                   tmp_path, capfd):
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.crop_size = 257  # Photos are resized to fit 257 x 257.
  config.eval.scales = (1.0,)
  config.eval.flip = False
  photos = tmp_path / 'photos'
  photos.mkdir()
  jpegs = sorted((voc_sample_dir / 'VOC2012' / 'JPEGImages').glob('*.jpg'))
  for jpeg in jpegs[:2]:
    shutil.copy(jpeg, photos / jpeg.name)
  (photos / 'notes.txt').write_text('not an image')
  output = tmp_path / 'out'
  summary = cli.run(config, mode='predict', workdir=str(workdir),
                    images=str(photos), output=str(output))
  assert summary['images'] == 2
  assert summary['skipped'] == [str(photos / 'notes.txt')]
  assert 'Skipping' in capfd.readouterr().err
  for jpeg in jpegs[:2]:
    with Image.open(output / f'{jpeg.stem}_mask.png') as mask, Image.open(
        jpeg) as photo:
      assert mask.mode == 'P' and mask.size == photo.size
      assert set(np.unique(np.asarray(mask))) <= set(range(21))
    assert (output / f'{jpeg.stem}_overlay.png').exists()
  assert json.loads((output / 'predictions.json').read_text())['images'] == 2


def test_follow_evaluates_each_new_checkpoint_with_one_compile(voc_run,
                                                               tmp_path):
  """--follow on a workdir that gets step 15, then step 30 (the final step)
  while it waits: both are evaluated, the second without compiling, and it
  returns after the final step."""
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  follower_dir = tmp_path / 'follow'
  source = workdir / 'checkpoints'

  def publish(step):  # Atomically, as orbax finalises a step.
    shutil.copytree(source / str(step), follower_dir / 'checkpoints' /
                    f'.tmp{step}')
    (follower_dir / 'checkpoints' / f'.tmp{step}').rename(
        follower_dir / 'checkpoints' / str(step))

  (follower_dir / 'checkpoints').mkdir(parents=True)
  publish(15)
  result = {}
  thread = threading.Thread(target=lambda: result.update(
      summary=evaluate.follow(config, str(follower_dir), poll_seconds=0.2,
                              timeout_seconds=300)))
  thread.start()
  deadline = time.time() + 300
  while not (follower_dir / 'eval' / 'metrics_15.json').exists():
    assert thread.is_alive() and time.time() < deadline
    time.sleep(0.2)
  publish(30)
  thread.join(timeout=300)
  assert not thread.is_alive()
  assert result['summary']['step'] == 30
  second = _metrics(follower_dir, 30)
  assert second['compiles'] == 0
  # Each checkpoint's own weights were evaluated.
  assert second['confusion_matrix'] == _metrics(workdir, 30)[
      'confusion_matrix']
  assert _metrics(follower_dir, 15)['confusion_matrix'] == _metrics(
      workdir, 15)['confusion_matrix']


def test_follow_evaluates_every_checkpoint_in_order_and_alone(
    voc_run, tmp_path, capsys):
  """Steps 15 and 30 both on disk at the first look: both are evaluated,
  in order (only 30 with follow_newest_only); a second follower of the
  same results folder is told, not run; metrics files appear whole."""
  from deeplab_jax.workdir_lock import WorkdirLock  # pylint: disable=g-import-not-at-top
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.num_result_images = 0
  follower_dir = tmp_path / 'follow'
  shutil.copytree(workdir / 'checkpoints', follower_dir / 'checkpoints')
  summary = evaluate.follow(config, str(follower_dir), poll_seconds=0.1,
                            timeout_seconds=30)
  out = capsys.readouterr().out
  assert summary['step'] == 30
  assert out.index('Evaluating step 15') < out.index('Evaluating step 30')
  assert _metrics(follower_dir, 15)['confusion_matrix'] == _metrics(
      workdir, 15)['confusion_matrix']
  assert not [p.name for p in (follower_dir / 'eval').iterdir()
              if p.name.endswith('.tmp')]
  config.eval.follow_newest_only = True
  newest = tmp_path / 'newest'
  evaluate.follow(config, str(follower_dir), poll_seconds=0.1,
                  timeout_seconds=30, out_dir=str(newest))
  assert sorted(p.name for p in newest.glob('metrics_*.json')) == [
      'metrics_30.json']
  with WorkdirLock(newest, lock_file='follow.lock', what='evaluated'):
    with pytest.raises(CheckpointError, match='is being evaluated by another '
                       r'run \(host .*pass another --output'):
      evaluate.follow(config, str(follower_dir), poll_seconds=0.1,
                      timeout_seconds=30, out_dir=str(newest))


def test_eval_of_a_run_it_cannot_write_to_takes_an_output_folder(
    voc_run, tmp_path):
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.num_result_images = 1
  run = tmp_path / 'someone_elses'
  shutil.copytree(workdir / 'checkpoints', run / 'checkpoints')
  (run / 'eval').write_text('not a folder: results cannot go here')
  with pytest.raises(ConfigError, match=r'Cannot write to .*someone_elses/'
                     r'eval .*pass a writable --output=DIR for the results '
                     r'\(the checkpoints are only read\)'):
    cli.run(config, mode='eval', workdir=str(run))
  results = tmp_path / 'results'
  summary = cli.run(config, mode='eval', workdir=str(run),
                    output=str(results))
  written = json.loads((results / 'metrics.json').read_text())
  assert written['miou'] == summary['miou'] and written['step'] == 30
  assert len(list((results / 'images').glob('*.png'))) == 1
  assert sorted(p.name for p in run.iterdir()) == ['checkpoints', 'eval']


def test_one_evaluator_scores_new_weights_without_compiling(voc_run):
  """Two different models through one Evaluator: the second compiles
  nothing and scores exactly as a fresh Evaluator does."""
  config, _, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.num_result_images = 0
  evaluator = evaluate.Evaluator(config)
  models = [create_model(config.model, rngs=nnx.Rngs(seed))
            for seed in (1, 2)]
  first = evaluator.evaluate(models[0], workdir=None)
  second = evaluator.evaluate(models[1], workdir=None)
  assert second['compiles'] == 0
  assert first['confusion_matrix'] != second['confusion_matrix']
  fresh = evaluate.Evaluator(config).evaluate(models[1], workdir=None)
  assert fresh['confusion_matrix'] == second['confusion_matrix']


def test_init_from_a_workdir_loads_every_array(voc_run):
  config, workdir, _ = voc_run
  model = create_model(config.model, rngs=nnx.Rngs(7))
  report = pretrained.load_into_model(model, str(workdir), config)
  expected = checkpoints.read_weights(workdir)  # The newest step, 30.
  assert report['loaded'] == len(expected) and not report['skipped']
  for key, value in tree.module_weights(model).items():
    np.testing.assert_array_equal(value, expected[key])


def test_restore_model_reads_weights_only(voc_run):
  """The inference loader restores parameters and BatchNorm statistics
  without the optimizer: it works under a config with another optimizer
  (whose state would not fit) and gives the checkpoint's exact arrays."""
  config, workdir, _ = voc_run
  config = config.copy_and_resolve_references()
  config.train.optimizer = 'adam'
  config.train.reduce_on_plateau_factor = 0.5
  model, step = checkpoints.restore_model(config, str(workdir))
  assert step == 30
  assert model.backbone.output_stride == config.eval.output_stride
  saved = checkpoints.read_weights(workdir / 'checkpoints' / '30')
  restored = tree.module_weights(model)
  assert restored.keys() == saved.keys()
  for key, value in saved.items():
    np.testing.assert_array_equal(restored[key], value)
  with pytest.raises(CheckpointError, match='No checkpoint'):
    checkpoints.restore_model(config, str(workdir / 'nothing'))


def test_follow_on_a_mistyped_workdir_stops_with_one_message(voc_run,
                                                             tmp_path):
  config, _, _ = voc_run
  config = config.copy_and_resolve_references()
  config.eval.follow_timeout = 0.5
  missing = tmp_path / 'runs' / 'typo'
  with pytest.raises(CheckpointError, match=r'No checkpoint appeared in .*'
                     r'typo/checkpoints within 0 s \(config.eval.'
                     r'follow_timeout\)'):
    evaluate.follow(config, str(missing), poll_seconds=0.1)
  assert not missing.exists()  # Nothing was created there.
