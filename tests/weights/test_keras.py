"""Keras MobileNetV2 (keras.applications, random weights saved to a local
file) mapped into our backbone: features equal Keras's within 1e-4."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.config import default_config
from deeplab_jax.errors import WeightImportError
from deeplab_jax.weights import keras as keras_weights
from tests.conftest import backbone_with_weights, random_keras_mobilenet_v2

SIZE = 97  # Odd: TF 'SAME' pads (1, 1) at every stride-2 layer here.


@pytest.mark.parametrize('alpha', [0.35, 0.5, 1.0, 1.4])
def test_imagenet_mapping_reproduces_keras_features(alpha, tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  keras_model = random_keras_mobilenet_v2(alpha, SIZE)
  weights_file = tmp_path / f'mobilenet_v2_{alpha}.weights.h5'
  keras_model.save_weights(weights_file)

  config = default_config().model
  config.backbone.depth_multiplier = alpha
  config.backbone.channel_rounding = 'keras'
  config.backbone.bn_epsilon = 1e-3  # Keras's.
  weights = keras_weights.imagenet_backbone_weights(
      config, weights=str(weights_file))
  backbone = backbone_with_weights(config, weights)

  probe = keras.Model(keras_model.input, [
      keras_model.get_layer('block_16_project_BN').output,
      keras_model.get_layer('block_2_depthwise_relu').output
  ])
  x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(
      np.float32)
  keras_features, keras_low = probe.predict(x, verbose=0)
  ours = nnx.jit(lambda b, x: b(x))(backbone, jnp.asarray(x))
  assert np.abs(keras_features).max() > 0.1  # Not a degenerate comparison.
  np.testing.assert_allclose(ours['features'], keras_features, atol=1e-4)
  np.testing.assert_allclose(ours['low_level'], keras_low, atol=1e-4)


def test_keras_widths_need_keras_rounding():
  config = default_config().model
  config.backbone.depth_multiplier = 0.5
  with pytest.raises(WeightImportError, match="channel_rounding='keras'"):
    keras_weights.imagenet_backbone_weights(config, weights='imagenet')
  config.backbone.depth_multiplier = 0.6
  with pytest.raises(WeightImportError, match='alpha in'):
    keras_weights.imagenet_backbone_weights(config, weights='imagenet')
