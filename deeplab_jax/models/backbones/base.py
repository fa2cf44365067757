"""What every backbone provides: the interface the heads, the decoder, the
data pipeline and the weight importers rely on.

A backbone is an `nnx.Module` subclass of `Backbone` that

* maps images, normalised its own way, to a dict of endpoints: 'features'
  (the head's input, at the output stride) and 'low_level' (the decoder's
  stride-4 input) at least, any others by name;
* states the channels of those two (`out_channels`, `low_level_channels`);
* states its input preprocessing (`preprocessing(config)`: per-channel mean
  and scale, so that padding with the mean pixel is 0 after normalisation, as
  the reference pads);
* names its convolutions by the reference DeepLab's TF scopes (`tf_scopes`),
  which the TFLite and TF-checkpoint importers read;
* owns its config keys: `default_config()` is its `config.model.backbone`
  sub-dict (with `name`), `validate_config()` checks it, `from_config()`
  builds it.

`deeplab_jax.models.backbones.BACKBONES` maps `config.model.backbone.name` to
the class.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from flax import nnx

from deeplab_jax.models.layers import LayerOptions

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a network wants its RGB pixels: (pixel - mean) / scale per channel.

  The reference DeepLab pads crops with the mean pixel, which normalises to
  0; `normalize` and `denormalize` are numpy (host) functions used by the
  data pipeline, predict, the notebook and the pictures.

  Attributes:
    mean: per-channel RGB mean in pixel units [0, 255].
    scale: per-channel divisor in pixel units.
  """
  mean: tuple[float, float, float]
  scale: tuple[float, float, float]

  @property
  def pad_value(self) -> float:
    """Padding in network-input units: the mean pixel, normalised, is 0."""
    return 0.0

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> float32 network input."""
    # x * (1 / scale) - mean / scale: for [-1, 1] this is exactly the
    # reference's x * (1 / 127.5) - 1.
    inverse = (1.0 / np.asarray(self.scale, np.float64)).astype(np.float32)
    offset = (np.asarray(self.mean, np.float64) /
              np.asarray(self.scale, np.float64)).astype(np.float32)
    return np.asarray(image, np.float32) * inverse - offset

  def normalize_jax(self, image: jax.Array) -> jax.Array:
    """`normalize` inside a traced function (exports that take uint8)."""
    inverse = (1.0 / np.asarray(self.scale, np.float64)).astype(np.float32)
    offset = (np.asarray(self.mean, np.float64) /
              np.asarray(self.scale, np.float64)).astype(np.float32)
    return image.astype(np.float32) * inverse - offset

  def denormalize(self, image: np.ndarray) -> np.ndarray:
    """The inverse of `normalize`, as uint8 (rounded, clipped)."""
    pixels = (np.asarray(image, np.float32) * np.asarray(self.scale, np.float32)
              + np.asarray(self.mean, np.float32))
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


# MobileNet and Xception in the reference: x / 127.5 - 1, i.e. [-1, 1].
INCEPTION_PREPROCESSING = Preprocessing(mean=(127.5, 127.5, 127.5),
                                        scale=(127.5, 127.5, 127.5))


class Backbone(nnx.Module, abc.ABC):
  """Base class of the feature extractors (see the module docstring)."""

  # The config.model.backbone.name it is registered under.
  name: ClassVar[str]

  @classmethod
  @abc.abstractmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    """Its `config.model.backbone` sub-dict with the reference defaults
    (including `name`)."""

  @classmethod
  def validate_config(cls, backbone_config: Any, key: str,
                      check: 'ConfigChecks') -> None:
    """Raises ConfigError (through `check`) on a bad value; the keys were
    already checked against `default_config()`."""

  @classmethod
  @abc.abstractmethod
  def from_config(cls, backbone_config: Any, *, output_stride: int,
                  dtype: Any, depthwise_impl: str,
                  rngs: nnx.Rngs) -> 'Backbone':
    """Builds it for `output_stride` (8, 16 or 32)."""

  @classmethod
  @abc.abstractmethod
  def preprocessing(cls, backbone_config: Any) -> Preprocessing:
    """The input normalisation its weights expect."""

  @property
  @abc.abstractmethod
  def out_channels(self) -> int:
    """Channels of the 'features' endpoint."""

  @property
  @abc.abstractmethod
  def low_level_channels(self) -> int:
    """Channels of the 'low_level' endpoint."""

  @abc.abstractmethod
  def tf_scopes(self) -> dict[str, nnx.Module]:
    """{reference TF scope: our ConvBN} for every convolution."""

  @abc.abstractmethod
  def __call__(self, images: Array) -> dict[str, Array]:
    """[N, H, W, 3] normalised images -> {'features', 'low_level', ...}."""


@dataclasses.dataclass(frozen=True)
class ConfigChecks:
  """The validation helpers of `deeplab_jax.config`, handed to a backbone's
  `validate_config` so that every module raises the same messages."""
  one_of: Callable[[str, Any, Any], None]
  positive_int: Callable[..., None]
  number_in: Callable[..., None]


def atrous_schedule(strides: Sequence[int],
                    output_stride: int) -> list[tuple[int, int]]:
  """(layer stride, layer dilation) per layer for a target output stride.

  Slim's and the reference's atrous conversion (`stack_blocks_dense`,
  `mobilenet_base`): walking the layers in order, once the running stride
  equals `output_stride` every later layer runs with stride 1 and the
  current rate, and the rate grows by the layer's nominal stride.
  """
  current_stride, rate, schedule = 1, 1, []
  for stride in strides:
    if current_stride == output_stride:
      schedule.append((1, rate))
      rate *= stride
    else:
      schedule.append((stride, 1))
      current_stride *= stride
  return schedule


def validate_batch_norm(backbone_config: Any, key: str,
                        check: ConfigChecks) -> None:
  """The `bn_momentum` and `bn_epsilon` keys every backbone has."""
  check.number_in(f'{key}.bn_momentum', backbone_config.bn_momentum, 0.0,
                  1.0)
  check.number_in(f'{key}.bn_epsilon', backbone_config.bn_epsilon, 0.0, 1.0,
                  lo_open=True)


def validate_multi_grid(multi_grid: Any, key: str,
                        check: ConfigChecks) -> None:
  """Three positive unit rates (the reference's `multi_grid`)."""
  if len(tuple(multi_grid)) != 3:
    check.one_of(key, multi_grid, ('three positive rates, e.g. (1, 2, 4)',))
  for i, rate in enumerate(multi_grid):
    check.positive_int(f'{key}[{i}]', rate)


def layer_options(backbone_config: Any, *, dtype: Any,
                  depthwise_impl: str) -> LayerOptions:
  """LayerOptions from a backbone config's bn_momentum / bn_epsilon."""
  return LayerOptions(bn_momentum=backbone_config.bn_momentum,
                      bn_epsilon=backbone_config.bn_epsilon, bn_scale=True,
                      dtype=dtype, depthwise_impl=depthwise_impl)
