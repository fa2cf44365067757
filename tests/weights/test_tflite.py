"""Official DeepLab TFLite exports: our model vs the LiteRT interpreter."""

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.config import default_config
from deeplab_jax.errors import WeightImportError
from deeplab_jax.models import create_model, inference_view
from deeplab_jax.weights import tflite

PHOTOS = ('bird', 'cat', 'grace_hopper')
FLOAT = 'deeplabv3_257_mv_gpu.tflite'


def published_config(depth_multiplier):
  """config.model of the published MobileNetV2 PASCAL networks."""
  model = default_config().model
  model.backbone.depth_multiplier = depth_multiplier
  model.head.atrous_rates = ()
  model.decoder.type = 'upsample'
  return model


@pytest.fixture(scope='module')
def float_model(shared_models_dir):
  weights = tflite.read_tflite(shared_models_dir / FLOAT)
  model = create_model(published_config(0.5), output_stride=8)
  tflite.load_into(model, weights)
  return weights, inference_view(model)


def test_float_export_is_read_with_its_architecture(float_model):
  weights, _ = float_model
  assert weights.depth_multiplier == 0.5
  assert weights.output_stride == 8
  assert weights.input_size == (257, 257)
  assert not weights.quantized
  assert weights.layers['MobilenetV2/Conv'][0].shape == (3, 3, 3, 16)


@pytest.mark.parametrize('photo', PHOTOS)
def test_float_model_matches_litert_logits_and_argmax(float_model, photo,
                                                      shared_models_dir):
  _, model = float_model
  testdata = shared_models_dir / 'testdata'
  pixels = np.asarray(Image.open(testdata / f'{photo}_257.png').convert('RGB'),
                      np.float32)
  images = pixels[None] / 127.5 - 1.0  # The export's stripped `sub`.
  # The model's normal forward pass; logits at 33x33 as LiteRT's.
  logits33 = np.asarray(model(images, upsample=False))[0]
  reference = np.load(testdata / f'{photo}_257_ref_logits33.npy')
  assert np.abs(reference).max() > 10  # Real logits, not a blank image.
  np.testing.assert_allclose(logits33, reference, atol=1e-3)
  argmax = np.argmax(np.asarray(model(images))[0], axis=-1)
  reference_argmax = np.asarray(Image.open(testdata /
                                           f'{photo}_257_ref_argmax.png'))
  assert np.mean(argmax == reference_argmax) >= 0.999


@pytest.mark.parametrize('file,depth_multiplier', [
    ('deeplabv3_mnv2_pascal_quant.tflite', 1.0),
    ('deeplabv3_mnv2_dm05_pascal_quant.tflite', 0.5),
])
def test_uint8_models_agree_with_litert_argmax(file, depth_multiplier,
                                               shared_models_dir):
  import jax  # pylint: disable=g-import-not-at-top
  path = shared_models_dir / file
  weights = tflite.read_tflite(path)
  assert weights.quantized and weights.depth_multiplier == depth_multiplier
  assert weights.output_stride == 16 and weights.input_size == (513, 513)
  model = create_model(published_config(depth_multiplier), output_stride=16)
  tflite.load_into(model, weights)
  segment = jax.jit(lambda x: inference_view(model)(x).argmax(-1))
  interpreter = tflite.interpreter(path)
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  for photo in PHOTOS:
    image = Image.open(shared_models_dir / 'testdata' / f'{photo}.png')
    pixels = np.asarray(image.convert('RGB').resize((513, 513),
                                                    Image.BILINEAR))
    interpreter.set_tensor(inp['index'], pixels[None].astype(np.uint8))
    interpreter.invoke()
    reference = interpreter.get_tensor(out['index'])[0]
    ours = np.asarray(segment(pixels[None] / np.float32(127.5) - 1.0))[0]
    agreement = np.mean(ours == reference)
    assert agreement >= 0.98, (photo, agreement)


def test_config_disagreeing_with_the_file_is_named(shared_models_dir):
  weights = tflite.read_tflite(shared_models_dir / FLOAT)
  config = published_config(1.0)
  with pytest.raises(WeightImportError,
                     match=r'depth multiplier 0\.5 \(config\.model\.backbone'
                     r'\.depth_multiplier = 1\.0\).*output stride 8 '
                     r'\(config\.eval\.output_stride = 16\)'):
    tflite.check_config(weights, config, eval_output_stride=16)


def test_model_with_layers_the_file_lacks_is_named(shared_models_dir):
  weights = tflite.read_tflite(shared_models_dir / FLOAT)
  config = published_config(0.5)
  config.head.atrous_rates = (6, 12, 18)
  model = create_model(config, output_stride=8)
  with pytest.raises(WeightImportError, match=r'aspp1_depthwise.*decoder'):
    tflite.load_into(model, weights)


def test_not_a_tflite_file_is_named(tmp_path):
  bogus = tmp_path / 'model.tflite'
  bogus.write_bytes(b'not a flatbuffer')
  with pytest.raises(WeightImportError, match='not a readable TFLite model'):
    tflite.read_tflite(bogus)
