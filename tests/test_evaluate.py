"""A short real-data run on the VOC sample: the loss falls; evaluation and
prediction write their files; evaluation groups shapes correctly."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from deeplab_jax import cli, evaluate
from deeplab_jax.data import voc
from tests.test_train import _voc_train_config


@pytest.fixture(scope='module')
def voc_run(voc_prepared, tmp_path_factory):
  """30 steps on the 26 VOC sample training images, then the config."""
  config, _ = voc_prepared
  # The same program as test_train's resume test: one compile for both.
  config = _voc_train_config(config.data.data_dir, config.data.manual_dir)
  config.train.checkpoint_every_steps = 30
  workdir = tmp_path_factory.mktemp('voc_run')
  result = cli.run(config, mode='train', workdir=str(workdir))
  return config, workdir, result


def _logged(workdir, tag):
  """The values clu wrote to TensorBoard under `tag`, in step order."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(str(workdir))
  accumulator.Reload()
  return [float(tensor_util.make_ndarray(e.tensor_proto))
          for e in accumulator.Tensors(tag)]


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
  assert 0.0 <= written['miou'] <= 1.0
  assert written['pixel_accuracy'] > 0.3  # Background dominates.
  assert written['miou'] == pytest.approx(summary['miou'])
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


def test_batches_group_equal_shapes_only():
  shapes = [(4, 4), (4, 4), (6, 4), (4, 4), (4, 4), (4, 4)]
  examples = [{'image': np.zeros(s + (3,))} for s in shapes]
  groups = list(evaluate.batches_by_shape(iter(examples), batch_size=2))
  assert [len(g) for g in groups] == [2, 1, 2, 1]
  assert all(len({e['image'].shape for e in g}) == 1 for g in groups)
