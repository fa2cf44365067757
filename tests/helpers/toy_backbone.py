"""A two-convolution backbone for tests of the training machinery.

tests/test_train.py's checkpoint, resume, two-process and fault-injection
tests (kill -9, two trainers, SIGTERM) build, trace and start many
trainers: with MobileNetV2's 17 blocks each trainer took 2.5x the CPU to
start. What they test (locks, checkpoints, resume, a cluster's shares of
the batch, data workers, non-finite steps) does not depend on the
backbone, so they train this one, as do the dataset and evaluation tests
that train (tests/test_evaluate.py, tests/data/); the 1-vs-8-device and
frozen-backbone tests keep MobileNetV2.
`tests/models/backbones/test_registry.py` also takes it through the
backbone seam.
"""

import ml_collections

from deeplab_jax.models import backbones
from deeplab_jax.models.backbones import Backbone, Preprocessing
from deeplab_jax.models.backbones.base import layer_options
from deeplab_jax.models.layers import ConvBN

TOY_PREPROCESSING = Preprocessing(mean=(100.0, 110.0, 120.0),
                                  scale=(50.0, 50.0, 50.0))


class ToyBackbone(Backbone):
  """stem (stride 4) -> 'low_level'; body (stride os / 4) -> 'features'."""

  name = 'toy'

  @classmethod
  def default_config(cls):
    c = ml_collections.ConfigDict()
    c.name = cls.name
    c.width = 8
    c.bn_momentum = 0.99
    c.bn_epsilon = 1e-3
    return c

  @classmethod
  def validate_config(cls, backbone_config, key, check):
    check.positive_int(f'{key}.width', backbone_config.width)

  @classmethod
  def from_config(cls, backbone_config, *, output_stride, dtype,
                  depthwise_impl, rngs):
    return cls(backbone_config.width, output_stride,
               layer_options(backbone_config, dtype=dtype,
                             depthwise_impl=depthwise_impl), rngs)

  @classmethod
  def preprocessing(cls, backbone_config):
    return TOY_PREPROCESSING

  def __init__(self, width, output_stride, options, rngs):
    self.stem = ConvBN(3, width, 3, strides=4, options=options, rngs=rngs)
    self.body = ConvBN(width, 2 * width, 3, strides=output_stride // 4,
                       options=options, rngs=rngs)
    self.width = width
    self.output_stride = output_stride

  @property
  def out_channels(self):
    return 2 * self.width

  @property
  def low_level_channels(self):
    return self.width

  def tf_scopes(self):
    return {'toy/stem': self.stem, 'toy/body': self.body}

  def __call__(self, images):
    low = self.stem(images)
    return {'low_level': low, 'features': self.body(low)}


def register() -> None:
  """Adds 'toy' to the registry (idempotent)."""
  backbones.BACKBONES.setdefault(ToyBackbone.name, ToyBackbone)


def use_toy_model(config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """`config` (changed in place and returned) with the toy backbone and an
  8-channel head and decoder; everything else, the number of classes
  included, stays the config's."""
  config.model.backbone = ToyBackbone.default_config()
  config.model.head.channels = 8
  config.model.head.projection_channels = 8
  config.model.decoder.channels = 8
  config.model.decoder.low_level_channels = 8
  return config
