"""Exports of the imported official float dm0.5 model, run by their own
runtimes (LiteRT, jax.export) on a real photo, against the Flax model and
the official file."""

import collections
import json
import pathlib

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from deeplab_jax import cli, export
from deeplab_jax.errors import ConfigError
from deeplab_jax.models import backbones, inference_view
from deeplab_jax.weights import pretrained

FLOAT = 'deeplabv3_257_mv_gpu.tflite'


def _op_counts(path) -> dict[str, int]:
  """{TFLite builtin op name: how many} of the file (XNNPACK's DELEGATE
  nodes left out: they are what the runtime made of the ops)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  return dict(collections.Counter(
      op['op_name'] for op in interpreter._get_ops_details()  # pylint: disable=protected-access
      if op['op_name'] != 'DELEGATE'))


def _litert(path, image):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=str(path), num_threads=2)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], image)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


@pytest.fixture(scope='module')
def official(shared_models_dir):
  config = pretrained.config_for('mnv2_dm05_pascal_float_257')
  path = shared_models_dir / FLOAT
  config.train.init_from = str(path)
  model = pretrained.load_model_file(str(path), config)
  testdata = shared_models_dir / 'testdata'
  pixels = np.asarray(Image.open(testdata / 'bird_257.png').convert('RGB'))
  images = (pixels[None].astype(np.float32) / 127.5 - 1).astype(np.float32)
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(inference_view(model),
                                                 images))
  return config, model, path, pixels, images, logits


def test_tflite_export_under_litert_gives_flax_and_official_logits(
    official, tmp_path):
  config, model, official_path, _, images, logits = official
  path = export.export(model, config, 'tflite', str(tmp_path / 'm.tflite'))
  ours = _litert(path, images)
  assert ours.shape == logits.shape == (1, 257, 257, 21)
  assert np.abs(logits).max() > 1.0  # Not a degenerate comparison.
  np.testing.assert_allclose(ours, logits, atol=1e-4)
  assert (ours.argmax(-1) == logits.argmax(-1)).all()
  # Round trip: official file -> import -> export equals the official file,
  # in its outputs and in its ops (RESIZE_BILINEAR and AVERAGE_POOL_2D, not
  # FULLY_CONNECTED, TRANSPOSE, MUL, SUM or RESHAPE).
  np.testing.assert_allclose(ours, _litert(official_path, images), atol=1e-4)
  official_ops = _op_counts(official_path)
  assert official_ops['RESIZE_BILINEAR'] == 3, official_ops
  assert _op_counts(path) == official_ops


def test_a_decoder_model_exports_to_the_official_ops(tmp_path):
  """DeepLabV3+ (decoder, separable ASPP at OS 16): its decoder's resize is
  a RESIZE_BILINEAR too, and LiteRT gives the Flax logits."""
  from deeplab_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import create_model  # pylint: disable=g-import-not-at-top
  config = load_config_file(str(pathlib.Path(__file__).parents[2] /
                                'configs/voc.py'))
  config.eval.crop_size = 129
  model = create_model(config.model, rngs=nnx.Rngs(0))
  images = np.random.default_rng(0).uniform(
      -1, 1, (1, 129, 129, 3)).astype(np.float32)
  want = np.asarray(nnx.jit(lambda m, x: m(x))(inference_view(model),
                                                images))
  path = export.export(model, config, 'tflite', str(tmp_path / 'd.tflite'))
  ops = _op_counts(path)
  # Image pooling, the decoder's upsampling, the logits' identity and
  # the final upsampling.
  assert ops.get('RESIZE_BILINEAR') == 4, ops
  assert ops.get('AVERAGE_POOL_2D') == 1, ops
  assert not {'FULLY_CONNECTED', 'TRANSPOSE', 'SUM', 'MUL'} & set(ops), ops
  np.testing.assert_allclose(_litert(path, images), want, atol=1e-4)


def test_stablehlo_export_reloads_without_the_model_code(official, tmp_path):
  config, model, _, _, images, logits = official
  path = export.export(model, config, 'stablehlo',
                       str(tmp_path / 'm.stablehlo'))
  import jax  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:  # What the README's loader does.
    call = jax.export.deserialize(bytearray(f.read())).call
  ours = np.asarray(call(images))
  np.testing.assert_allclose(ours, logits, atol=1e-4)
  assert (ours.argmax(-1) == logits.argmax(-1)).all()
  # The batch is symbolic.
  assert np.asarray(call(np.repeat(images, 2, 0))).shape == (2, 257, 257, 21)


def test_onnx_export_under_onnxruntime_gives_flax_logits(official, tmp_path):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  config, model, _, _, images, logits = official
  path = export.export(model, config, 'onnx', str(tmp_path / 'm.onnx'))
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  ours = session.run(None, {session.get_inputs()[0].name: images})[0]
  np.testing.assert_allclose(ours, logits, atol=1e-4)
  assert (ours.argmax(-1) == logits.argmax(-1)).all()


def test_saved_model_serves_the_flax_logits(official, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config, model, _, _, images, logits = official
  path = export.export(model, config, 'saved_model',
                       str(tmp_path / 'saved_model'))
  serve = tf.saved_model.load(path).signatures['serving_default']
  ours = serve(images=tf.constant(np.repeat(images, 2, 0)))['outputs']
  assert ours.shape == (2, 257, 257, 21)  # A dynamic batch.
  np.testing.assert_allclose(ours.numpy()[:1], logits, atol=1e-4)
  assert (ours.numpy()[:1].argmax(-1) == logits.argmax(-1)).all()


def test_uint8_input_and_argmax_output(official, tmp_path):
  config, model, _, pixels, _, logits = official
  config = config.copy_and_resolve_references()
  config.export.include_preprocessing = True
  config.export.output = 'argmax'
  path = export.export(model, config, 'tflite', str(tmp_path / 'a.tflite'))
  classes = _litert(path, pixels[None].astype(np.uint8))
  assert classes.shape == (1, 257, 257)
  # x / 127.5 - 1 inside the graph: the same classes as the float input.
  assert (classes == logits.argmax(-1)).mean() > 0.9999


def test_export_mode_writes_once_and_names_bad_formats(official, tmp_path,
                                                       capsys):
  config = official[0]
  out = cli.run(config, mode='export', workdir=str(tmp_path),
                export_format='stablehlo')
  assert out == str(tmp_path / 'export' / 'model_os8.stablehlo')
  assert 'Exported stablehlo' in capsys.readouterr().out
  with pytest.raises(ConfigError, match='exists.*never overwrite'):
    cli.run(config, mode='export', workdir=str(tmp_path),
            export_format='stablehlo')
  with pytest.raises(ConfigError, match="'pt' is not a known export format: "
                     "use one of 'tflite', 'tflite_int8', 'onnx', "
                     "'stablehlo', 'saved_model'"):
    cli.run(config, mode='export', workdir=str(tmp_path),
            export_format='pt')


def test_int8_calibration_takes_training_images_not_the_scored_ones(
    official, voc_prepared):
  """The int8 report scores the eval split: calibration reads
  export.calibration_split (train), unaugmented and fitted to the input."""
  from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from deeplab_jax.export import tflite  # pylint: disable=g-import-not-at-top
  data_config, _ = voc_prepared
  config = official[0].copy_and_resolve_references()
  config.data.data_dir = data_config.data.data_dir
  config.data.num_workers = 0
  config.export.calibration_images = 3
  images = tflite.calibration_images(config)
  assert len(images) == 3 and images[0].shape == (1, 257, 257, 3)
  train = pipeline.data_source(config.data, 'train')
  names = [train[i]['file_name'] for i in range(3)]
  assert config.export.calibration_split == 'train'
  c = config.copy_and_resolve_references()
  c.eval.input_scale, c.eval.mode, c.eval.crop_size = 'fit', 'whole', 257
  first = next(iter(pipeline.eval_loader(c, split='train')))
  assert first['file_name'] in [n.decode() if isinstance(n, bytes) else n
                                for n in names]
  np.testing.assert_array_equal(
      images[0][0], backbones.preprocessing(c.model).denormalize(
          first['image']))


def test_exported_files_are_evaluated_by_the_eval_code(official, voc_prepared,
                                                       tmp_path, capsys):
  """The 32 VOC sample images through the eval pipeline: the Flax model,
  its float TFLite and its int8 TFLite (calibrated on the 26 train images) under
  LiteRT, and its ONNX file under onnxruntime."""
  from deeplab_jax import evaluate  # pylint: disable=g-import-not-at-top
  data_config, _ = voc_prepared
  config, model = official[0].copy_and_resolve_references(), official[1]
  config.data.data_dir = data_config.data.data_dir
  config.data.eval_split = 'train+validation'
  config.data.num_workers = 0
  config.eval.num_result_images = 0
  config.export.calibration_images = 32
  results = {}
  int8 = export.export(model, config, 'tflite_int8',
                       str(tmp_path / 'int8.tflite'))
  # The Flax model and the int8 file, scored by the eval code.
  report = cli.int8_report(model, config, int8)
  assert report['images'] == 32
  flax_miou = report['float_miou']
  with open(int8 + '.json') as f:
    assert json.load(f)['int8_miou'] == report['int8_miou']
  results['tflite_int8'] = (report['int8_miou'], report['bytes'])
  for name, runtime in (('tflite', 'litert'), ('onnx', 'onnxruntime')):
    path = export.export(model, config, name, str(tmp_path / f'{name}.file'))
    c = config.copy_and_resolve_references()
    c.eval.runtime, c.eval.model_file = runtime, path
    summary = evaluate.evaluate(c, None, workdir=None)
    assert summary['images'] == 32
    results[name] = (summary['miou'], pathlib.Path(path).stat().st_size)
  with capsys.disabled():
    print(f'\nsample mIoU (32 images): Flax {100 * flax_miou:.2f}, float '
          f'TFLite {100 * results["tflite"][0]:.2f} '
          f'({results["tflite"][1] / 2**20:.2f} MiB), int8 TFLite '
          f'{100 * results["tflite_int8"][0]:.2f} '
          f'({results["tflite_int8"][1] / 2**20:.2f} MiB), ONNX '
          f'{100 * results["onnx"][0]:.2f}')
  assert abs(results['tflite'][0] - flax_miou) * 100 <= 0.05
  assert abs(results['onnx'][0] - flax_miou) * 100 <= 0.05
  assert abs(results['tflite_int8'][0] - flax_miou) * 100 <= 1.5
  assert results['tflite_int8'][1] < results['tflite'][1] / 2


def test_eval_runtime_needs_a_file_and_one_scale(official):
  from deeplab_jax.inference import runtimes  # pylint: disable=g-import-not-at-top
  config = official[0].copy_and_resolve_references()
  config.eval.runtime = 'litert'
  with pytest.raises(ConfigError, match='set config.eval.model_file'):
    runtimes.make_scores(config)
  config.eval.model_file = str(official[2])
  config.eval.scales = (0.5, 1.0)
  with pytest.raises(ConfigError, match='one scale without flips'):
    runtimes.make_scores(config)


def test_predict_with_an_exported_file_matches_the_model(official, tmp_path,
                                                         shared_models_dir):
  from deeplab_jax import predict  # pylint: disable=g-import-not-at-top
  config, model = official[0].copy_and_resolve_references(), official[1]
  path = export.export(model, config, 'tflite', str(tmp_path / 'm.tflite'))
  c = config.copy_and_resolve_references()
  c.eval.runtime, c.eval.model_file = 'litert', path
  photo = np.asarray(Image.open(shared_models_dir / 'testdata' / 'cat.png')
                     .convert('RGB'))
  want, want_confidence = predict.make_segmenter(model, config)(photo)
  got, got_confidence = predict.make_segmenter(None, c)(photo)
  assert got.shape == want.shape == photo.shape[:2]
  assert len(np.unique(want)) > 1  # Something to agree on.
  assert (got == want).mean() > 0.999
  np.testing.assert_allclose(got_confidence, want_confidence, atol=1e-3)


def test_a_file_slides_over_an_image_larger_than_its_input(
    official, shared_models_dir):
  """The official 257x257 file on a 540x407 photo at native scale: tiles
  of its input, run by LiteRT, blended like the Flax model's own."""
  from deeplab_jax import predict  # pylint: disable=g-import-not-at-top
  config, model, path = official[:3]
  c = config.copy_and_resolve_references()
  c.eval.input_scale, c.eval.slide_context = 'native', 'tile'
  c.eval.mode, c.eval.tile_size = 'slide', 257
  photo = np.asarray(Image.open(shared_models_dir / 'testdata' / 'cat.png')
                     .convert('RGB'))
  want = predict.segment_function(model, c)(photo)
  c.eval.runtime, c.eval.model_file = 'litert', str(path)
  got = predict.segment_function(None, c)(photo)
  assert got.mode == want.mode == 'slide' and got.tiles == want.tiles == 6
  assert len(np.unique(want.classes)) > 1
  assert (got.classes == want.classes).mean() > 0.999


def test_a_file_that_disagrees_with_the_config_is_named(official, tmp_path):
  from deeplab_jax.inference import runtimes  # pylint: disable=g-import-not-at-top
  config = official[0].copy_and_resolve_references()
  config.eval.runtime, config.eval.model_file = 'litert', str(official[2])
  config.eval.crop_size = 321
  with pytest.raises(ConfigError, match='takes 257x257 images.*crop_size=257'):
    runtimes.make_scores(config)
  config.eval.crop_size = 257
  config.model.num_classes = 2
  with pytest.raises(ConfigError, match='scores 21 classes.*has 2'):
    runtimes.make_scores(config)
  bogus = tmp_path / 'bogus.tflite'
  bogus.write_bytes(b'not a model')
  config.eval.model_file = str(bogus)
  with pytest.raises(ConfigError, match='not a TFLite file'):
    runtimes.make_scores(config)


def test_an_export_target_that_cannot_be_written_is_named(official,
                                                          tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ConfigError, match='Cannot write to .*--output'):
    cli.run(official[0], mode='export', export_format='tflite',
            output=str(blocker / 'sub' / 'm.tflite'))
