"""ResNet v1 50/101: Keras parity (layout='keras'), the reference layout's
strides, rates, endpoints and TF scopes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.config import default_config, validate_config
from deeplab_jax.errors import ConfigError, WeightImportError
from deeplab_jax.models import backbones
from deeplab_jax.models.backbones.resnet import ResNetV1, resnet_layout
from deeplab_jax.weights import keras as keras_weights
from tests.conftest import (abstract, backbone_with_weights,
                            randomize_keras_batch_norm)

# Keras ResNet50 without its top: 23,534,592 trainable + 53,120 BN statistics.
KERAS_RESNET50_PARAMETERS = 23_587_712


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module)))


def _resnet_config(depth, **backbone):
  config = default_config().model
  config.backbone = backbones.backbone_config('resnet_v1')
  config.backbone.depth = depth
  config.backbone.update(backbone)
  return config


@pytest.mark.parametrize('depth,size', [(50, 64), (101, 65)])
def test_keras_layout_reproduces_keras_resnet(depth, size, tmp_path):
  # Keras's random weights (saved to a local file, read back through the
  # 'keras_imagenet' path) in ours give Keras's stride-4, low-level and
  # final features within 1e-4, at output stride 32. Even and odd sizes:
  # Keras pads its stride-2 convs and the max-pool symmetrically.
  import keras  # pylint: disable=g-import-not-at-top
  constructor = {50: keras.applications.ResNet50,
                 101: keras.applications.ResNet101}[depth]
  keras_model = constructor(input_shape=(size, size, 3), include_top=False,
                            weights=None)
  # Small gammas keep 33 residual units of random weights in float range.
  randomize_keras_batch_norm(keras_model, depth, gamma=(0.2, 0.6))
  weights_file = tmp_path / f'resnet{depth}.weights.h5'
  keras_model.save_weights(weights_file)

  config = _resnet_config(depth, layout='keras', multi_grid=(1, 1, 1))
  weights = keras_weights.imagenet_backbone_weights(
      config, weights=str(weights_file))
  backbone = backbone_with_weights(config, weights)
  if depth == 50:
    assert _count(backbone) == KERAS_RESNET50_PARAMETERS
  assert _count(backbone) == keras_model.count_params()

  probe = keras.Model(keras_model.input, [
      keras_model.get_layer('conv2_block3_out').output,
      keras_model.get_layer('conv2_block2_3_bn').output,
      keras_model.get_layer('conv5_block3_out').output,
  ])
  rgb = np.random.default_rng(1).integers(0, 256, (2, size, size, 3),
                                          dtype=np.uint8)
  # Keras's 'caffe' preprocessing (BGR, mean subtracted) vs ours (RGB).
  ours_in = backbones.preprocessing(config).normalize(rgb)
  keras_in = keras.applications.resnet.preprocess_input(
      rgb.astype(np.float32))
  stride4, low, final = probe.predict(keras_in, verbose=0)
  ours = nnx.jit(lambda b, x: b(x))(backbone, jnp.asarray(ours_in))
  assert ours['block1'].shape == stride4.shape == (2, -(-size // 4),
                                                   -(-size // 4), 256)
  assert ours['features'].shape == final.shape
  assert np.abs(final).max() > 0.1  # Not a degenerate comparison.
  np.testing.assert_allclose(ours['block1'], stride4, atol=1e-4)
  np.testing.assert_allclose(ours['low_level'], low, atol=1e-4)
  np.testing.assert_allclose(ours['features'], final, atol=1e-4)


def test_reference_layout_strides_rates_and_multi_grid():
  # Reference: blocks 1-3 subsample in their last unit; at OS 16 block 3's
  # last unit keeps stride 1 and block 4 runs at rate 2 x multi_grid.
  os16 = resnet_layout(50, 'reference', 16, (1, 2, 4))
  assert [u.stride for u in os16[0]] == [1, 1, 2]
  assert [u.stride for u in os16[1]] == [1, 1, 1, 2]
  assert [u.stride for u in os16[2]] == [1] * 6
  assert [u.rate for u in os16[2]] == [1] * 6
  assert [u.rate for u in os16[3]] == [2, 4, 8]
  os8 = resnet_layout(101, 'reference', 8, (1, 2, 4))
  assert [u.stride for u in os8[1]] == [1, 1, 1, 1]
  assert [u.rate for u in os8[1]] == [1, 1, 1, 1]
  assert [u.rate for u in os8[2]] == [2] * 23
  assert [u.rate for u in os8[3]] == [4, 8, 16]
  # Keras: the stride sits in the first unit, before its 3x3 conv.
  keras16 = resnet_layout(50, 'keras', 16, (1, 1, 1))
  assert [u.stride for u in keras16[3]] == [1, 1, 1]
  assert [u.rate for u in keras16[3]] == [2, 2, 2]
  assert [u.stride for u in keras16[1]] == [2, 1, 1, 1]


@pytest.mark.parametrize('depth,stem', [(50, '7x7'), (101, 'beta')])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_reference_shapes_at_every_output_stride(depth, stem, output_stride):
  backbone = abstract(lambda: ResNetV1(
      depth=depth, stem=stem, output_stride=output_stride, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda b, x: b(x), backbone,
                       jax.ShapeDtypeStruct((1, 97, 66, 3), jnp.float32))
  os_ = output_stride
  assert out['features'].shape == (1, -(-97 // os_), -(-66 // os_), 2048)
  assert out['low_level'].shape == (1, 25, 17, 256)
  assert backbone.out_channels == 2048 and backbone.low_level_channels == 256


def test_reference_scopes_and_parameter_counts():
  r50 = abstract(lambda: ResNetV1(depth=50, rngs=nnx.Rngs(0)))
  r101b = abstract(lambda: ResNetV1(depth=101, stem='beta',
                                    rngs=nnx.Rngs(0)))
  scopes = r50.tf_scopes()
  # 1 stem + 16 units x 3 convs + 4 projection shortcuts.
  assert len(scopes) == 1 + 16 * 3 + 4
  assert 'resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut' in scopes
  assert 'resnet_v1_50/block1/unit_3/bottleneck_v1/shortcut' not in scopes
  beta = r101b.tf_scopes()
  assert {'resnet_v1_101/conv1_1', 'resnet_v1_101/conv1_2',
          'resnet_v1_101/conv1_3'} <= set(beta)
  assert len(beta) == 3 + 33 * 3 + 4
  # The reference has no conv biases: Keras's count minus its 53 biases.
  biases = 64 + sum(n * (w + w + 4 * w) for n, w in zip(
      (3, 4, 6, 3), (64, 128, 256, 512))) + (256 + 512 + 1024 + 2048)
  assert _count(r50) == KERAS_RESNET50_PARAMETERS - biases


def test_reference_preprocessing_per_stem():
  config = _resnet_config(50)
  assert backbones.preprocessing(config).mean == (123.15, 115.90, 103.06)
  assert backbones.preprocessing(config).scale == (1.0, 1.0, 1.0)
  config.backbone.stem = 'beta'
  assert backbones.preprocessing(config) == backbones.INCEPTION_PREPROCESSING


def test_bad_resnet_settings_get_one_message():
  config = default_config()
  config.model.backbone = backbones.backbone_config('resnet_v1')
  config.model.backbone.depth = 34
  with pytest.raises(ConfigError, match='depth'):
    validate_config(config)
  config.model.backbone.depth = 50
  config.model.backbone.layout = 'keras'
  config.model.backbone.stem = 'beta'
  with pytest.raises(ConfigError, match='stem'):
    validate_config(config)
  config.model.backbone.stem = '7x7'
  config.model.backbone.multi_grid = (1, 2)
  with pytest.raises(ConfigError, match='multi_grid'):
    validate_config(config)


def test_keras_weights_need_the_keras_layout():
  config = _resnet_config(50)
  with pytest.raises(WeightImportError, match="layout='keras'"):
    keras_weights.imagenet_backbone_weights(config, weights=None)
