"""The backbone seam: a new backbone is one class and one registry line.

A toy backbone (tests/helpers/toy_backbone.py), registered for the test
only, goes through config validation, model building, the heads and
decoder, summary counts, weight-import scopes and the data pipeline's
normalisation without any other file knowing its name.
"""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from deeplab_jax.config import default_config, validate_config
from deeplab_jax.data import pipeline
from deeplab_jax.errors import ConfigError
from deeplab_jax.models import backbones, create_model, parameter_counts
from tests.helpers.toy_backbone import ToyBackbone


@pytest.fixture
def toy_registered(monkeypatch):
  monkeypatch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)


def _toy_config():
  config = default_config()
  config.model.backbone = backbones.backbone_config('toy')
  config.model.head.channels = config.model.head.projection_channels = 8
  config.model.decoder.channels = 8
  config.model.decoder.low_level_channels = 4
  return config


def test_a_registered_backbone_is_configured_built_and_run(toy_registered):
  config = _toy_config()
  validate_config(config)
  model = create_model(config.model, output_stride=8)
  assert isinstance(model.backbone, ToyBackbone)
  out = nnx.view(model, deterministic=True, use_running_average=True)(
      jnp.zeros((1, 33, 33, 3)))
  assert out.shape == (1, 33, 33, 21)
  # Its channels wire the head and decoder.
  assert model.head.aspp0.conv.in_features == 16
  assert model.decoder.feature_projection.conv.in_features == 8
  counts = parameter_counts(model)
  assert counts['backbone']['params'] == (3 * 3 * 3 * 8 + 2 * 8 +
                                          3 * 3 * 8 * 16 + 2 * 16)
  # Its TF scopes join the heads' for the weight importers.
  scopes = model.tf_scopes()
  assert scopes['toy/stem'] is model.backbone.stem
  assert 'concat_projection' in scopes and 'logits/semantic' in scopes


def test_its_own_keys_are_validated_by_it(toy_registered):
  config = _toy_config()
  config.model.backbone.width = 0
  with pytest.raises(ConfigError, match=r'config.model.backbone.width = 0'):
    validate_config(config)
  config = _toy_config()
  config.model.backbone.depth_multiplier = 0.5  # MobileNetV2's key.
  with pytest.raises(ConfigError, match=r"\['depth_multiplier'\] that "
                     r"backbone 'toy' does not take"):
    validate_config(config)


def test_unregistered_name_lists_the_registered_ones():
  config = default_config()
  config.model.backbone.name = 'toy'
  with pytest.raises(ConfigError, match=r"backbone.name = 'toy' is not "
                     r"allowed: use one of 'mobilenet_v2'"):
    validate_config(config)


def test_the_data_pipeline_normalises_the_backbones_way(toy_registered):
  """The eval pipeline asks the model's backbone, not a constant."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)

  def png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format='PNG')
    return buffer.getvalue()

  source = [{'image': png(pixels),
             'segmentation_mask': png(np.zeros((20, 30), np.uint8), 'L'),
             'file_name': b'x.png'}]
  config = _toy_config()
  config.data.num_workers = 0
  config.eval.crop_size = 32
  example = next(iter(pipeline.eval_loader(config, source=source)))
  expected = (pixels.astype(np.float32) - np.float32([100, 110, 120])) / 50
  np.testing.assert_allclose(example['image'][:20, :30], expected, atol=1e-5)
  np.testing.assert_array_equal(example['image'][20:], 0.0)  # Mean pixel.
  mobilenet = default_config()
  mobilenet.data.num_workers = 0
  mobilenet.eval.crop_size = 32
  other = next(iter(pipeline.eval_loader(mobilenet, source=source)))
  np.testing.assert_allclose(other['image'][:20, :30],
                             pixels / 127.5 - 1, atol=1e-6)

