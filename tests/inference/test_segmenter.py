"""The segmenter on real images with the official float model: one tile
over the image is exactly the whole-image result, tiles far smaller than
the image stay close to it (the VOC sample, and Cityscapes-size images),
and every tile batch of an image runs one compiled program."""

import json

import numpy as np
import pytest
from PIL import Image

from deeplab_jax import cli
from deeplab_jax.compile_stats import CompileCounter
from deeplab_jax.data import images, voc
from deeplab_jax.inference import programs
from deeplab_jax.weights import pretrained

FLOAT = 'deeplabv3_257_mv_gpu.tflite'


@pytest.fixture(autouse=True)
def _optimised_inference(monkeypatch):
  """These tests run the official model over megapixels: its programs are
  compiled at XLA's full optimisation, as outside the tests (conftest's
  fast-compile flags made them run 3x slower than they compile)."""
  monkeypatch.setattr(programs, 'CPU_INFERENCE_OPTIONS', dict(
      programs.CPU_INFERENCE_OPTIONS, xla_backend_optimization_level=3,
      xla_cpu_use_fusion_emitters=True))
  programs.compiler_options.cache_clear()
  yield
  programs.compiler_options.cache_clear()


@pytest.fixture(scope='module')
def official(voc_prepared, shared_models_dir):
  """The official float dm0.5 model's config at native scale on the 6
  VOC sample val images, and the model."""
  data_config, _ = voc_prepared
  config = pretrained.config_for('mnv2_dm05_pascal_float_257')
  config.data.data_dir = data_config.data.data_dir
  config.data.num_workers = 0
  config.eval.num_result_images = 0
  config.eval.input_scale = 'native'
  config.train.init_from = str(shared_models_dir / FLOAT)
  # Geometry, compared exactly: one engine (tests/inference/test_engines.py
  # compares LiteRT with XLA).
  config.eval.cpu_runtime = 'xla'
  model = pretrained.load_model_file(config.train.init_from, config)
  return config, model


def _eval(config, model, tmp_path, **overrides):
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    c.eval[key] = value
  return cli.evaluate.evaluate(c, model, workdir=str(tmp_path))


def test_one_tile_over_the_image_is_exactly_whole(official, tmp_path):
  config, model = official
  whole = _eval(config, model, tmp_path / 'w', mode='whole', crop_size=513)
  slide = _eval(config, model, tmp_path / 's', mode='slide', tile_size=513,
                crop_size=513)
  assert whole['modes'] == {'whole': 6, 'slide': 0}
  assert slide['modes'] == {'whole': 0, 'slide': 6}
  assert whole['miou'] > 0.6
  assert whole['confusion_matrix'] == slide['confusion_matrix']


def test_small_tiles_see_the_whole_image_through_its_mean_feature(
    official, tmp_path):
  """Tiles of 257 every 168 px on ~500x375 photos: each sees a quarter
  of the image. With the image's own mean feature in image pooling they
  stay within a few points of whole (measured: 83.8 whole, 79.3 tiles; 63.9
  with each tile's own mean: benchmarks/README.md)."""
  config, model = official
  whole = _eval(config, model, tmp_path / 'w', mode='whole')
  image = _eval(config, model, tmp_path / 'i', mode='slide', tile_size=257,
                tile_stride=171)
  assert image['modes'] == {'whole': 0, 'slide': 6}
  assert 0 <= whole['miou'] - image['miou'] < 0.06, (whole['miou'],
                                                     image['miou'])


def test_cityscapes_size_images_agree_whole_and_slide(official, tmp_path,
                                                      voc_sample_dir):
  """Two 1024x2048 images (VOC val photos and masks enlarged, as a folder
  dataset): whole (a 1025x2049 canvas) and 513 tiles agree within a
  point of mIoU."""
  config, model = official
  root = voc_sample_dir / 'VOC2012'
  folder = tmp_path / 'wide'
  for sub in ('images', 'masks', 'splits'):
    (folder / sub).mkdir(parents=True)
  stems = ['2007_000129', '2007_000332']
  for stem in stems:
    photo = images.read_rgb(root / 'JPEGImages' / f'{stem}.jpg')
    Image.fromarray(photo).resize((2048, 1024), Image.BILINEAR).save(
        folder / 'images' / f'{stem}.png')
    mask = voc.read_mask(str(root / 'SegmentationClass' / f'{stem}.png'))
    Image.fromarray(mask).resize((2048, 1024), Image.NEAREST).save(
        folder / 'masks' / f'{stem}.png')
  (folder / 'classes.txt').write_text('\n'.join(voc.CLASS_NAMES) + '\n')
  (folder / 'splits' / 'train.txt').write_text(stems[0] + '\n')
  (folder / 'splits' / 'val.txt').write_text('\n'.join(stems) + '\n')
  c = config.copy_and_resolve_references()
  c.data.dataset, c.data.folder = 'folder', str(folder)
  c.data.data_dir = str(tmp_path / 'tfds')
  whole = _eval(c, model, tmp_path / 'w', mode='whole')
  slide = _eval(c, model, tmp_path / 's', mode='slide')
  assert whole['modes']['whole'] == slide['modes']['slide'] == 2
  assert whole["miou"] > 0.1
  assert abs(whole['miou'] - slide['miou']) <= 0.01, (whole['miou'],
                                                      slide['miou'])
  written = json.loads((tmp_path / 's' / 'eval' / 'metrics.json').read_text())
  assert written['pixels'] == sum(
      int((np.asarray(Image.open(folder / 'masks' / f'{s}.png')) != 255).sum())
      for s in stems)


def test_every_tile_batch_runs_one_compiled_program(official):
  """A 600x900 image in 257 tiles, 4 at a time (5 batches, and as many
  for the image-context pass): a handful of programs, compiled once; the
  next image of that size compiles nothing."""
  config, model = official
  c = config.copy_and_resolve_references()
  c.eval.mode, c.eval.tile_size, c.eval.tile_batch = 'slide', 257, 4
  segment = cli.predict.segment_function(model, c)
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
  with CompileCounter() as first:
    result = segment(photo)
  assert result.mode == 'slide' and result.tiles == 2 * 4 * 5  # Two passes.
  assert first.lowerings <= 6, first.lowerings
  with CompileCounter() as second:
    again = segment(photo[::-1])
  assert second.lowerings == 0
  assert again.classes.shape == (600, 900)
