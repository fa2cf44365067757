"""MobileNetV2 feature extractor, as DeepLab uses it (NHWC).

The network ends at the last inverted residual block (`expanded_conv_16`,
320 channels at depth multiplier 1.0); the final 1x1 Conv to 1280 channels
of the classifier is not part of it.

Atrous conversion follows slim's `mobilenet_base`: walking the layers in
order, once the running stride equals `output_stride` every later layer runs
with stride 1, takes the current rate as its dilation, and multiplies the rate
by its nominal stride.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx

from deeplab_jax.models.backbones.base import (INCEPTION_PREPROCESSING,
                                               Backbone, ConfigChecks,
                                               Preprocessing, atrous_schedule,
                                               layer_options,
                                               validate_batch_norm)
from deeplab_jax.models.layers import ConvBN, LayerOptions

Array = jax.Array

# (expansion t, output channels c, repeats n, first stride s), MobileNetV2
# paper Table 2.
V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
STEM_STRIDE = 2
CHANNEL_ROUNDINGS = ('deeplab', 'keras')
# The reference's TF scope of the whole extractor.
TF_SCOPE = 'MobilenetV2'
# The reference decoder reads 'layer_4/depthwise_output': the depthwise
# output (after BN and ReLU6) of block 2, at stride 4 (Keras:
# block_2_depthwise_relu).
LOW_LEVEL_BLOCK = 2


def make_divisible(value: float, divisor: int,
                   min_value: int | None = None) -> int:
  """Slim's and Keras's `_make_divisible`: round to a multiple of divisor."""
  if min_value is None:
    min_value = divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:  # Never round down by more than 10%.
    new_value += divisor
  return new_value


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """One inverted residual block after width rounding and atrous conversion."""
  in_channels: int
  expanded_channels: int | None  # None: no expand conv (block 0).
  out_channels: int
  stride: int
  rate: int

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_channels == self.out_channels


def mobilenet_v2_layout(depth_multiplier: float = 1.0,
                        channel_rounding: str = 'deeplab',
                        output_stride: int = 32
                        ) -> tuple[int, int, list[BlockLayout]]:
  """Widths, strides and rates of every layer.

  Args:
    depth_multiplier: channel multiplier (Keras: alpha).
    channel_rounding: 'deeplab' rounds to multiples of 8 only at multiplier
      1.0 and otherwise keeps the rounded product (the official dm=0.5 model
      has 16, 8, 12, 16, 32, 48, 80, 160); 'keras' rounds every width to a
      multiple of 8 (Keras alpha 0.5 has 16 where DeepLab has 12).
    output_stride: 8, 16 or 32.

  Returns:
    (stem channels, stem stride, block layouts).
  """
  if channel_rounding == 'deeplab':
    divisor = 8 if depth_multiplier == 1.0 else 1

    def width(c):
      return make_divisible(c * depth_multiplier, divisor, divisor)

    def expanded(c_in, t):  # slim's expand_input_by_factor(t)
      return make_divisible(c_in * t, 1 if t == 1 else 8)

    stem = width(STEM_CHANNELS)
  elif channel_rounding == 'keras':

    def width(c):
      return make_divisible(int(c * depth_multiplier), 8)

    def expanded(c_in, t):
      return c_in * t

    stem = make_divisible(STEM_CHANNELS * depth_multiplier, 8)
  else:
    raise ValueError(f'Unknown channel_rounding {channel_rounding!r}.')

  nominal = []  # (t, out, stride) per block.
  for t, c, n, s in V2_BLOCKS:
    for i in range(n):
      nominal.append((t, width(c), s if i == 0 else 1))
  schedule = atrous_schedule([STEM_STRIDE] + [s for _, _, s in nominal],
                             output_stride)
  stem_stride = schedule[0][0]
  blocks, c_in = [], stem
  for (t, c_out, _), (stride, rate) in zip(nominal, schedule[1:]):
    exp = expanded(c_in, t)
    # As in slim: expand only when it widens (never in block 0, t = 1).
    blocks.append(
        BlockLayout(c_in, exp if exp > c_in else None, c_out, stride, rate))
    c_in = c_out
  return stem, stem_stride, blocks


class InvertedResidual(nnx.Module):
  """expand 1x1 (ReLU6) -> depthwise 3x3 (ReLU6) -> project 1x1 (linear)."""

  def __init__(self, layout: BlockLayout, *, options: LayerOptions,
               rngs: nnx.Rngs):
    inner = layout.expanded_channels or layout.in_channels
    self.expand = (
        ConvBN(layout.in_channels, inner, 1, activation='relu6',
               options=options, rngs=rngs)
        if layout.expanded_channels else None)
    self.depthwise = ConvBN(
        inner, inner, 3, strides=layout.stride, rate=layout.rate, groups=inner,
        activation='relu6', options=options, rngs=rngs)
    self.project = ConvBN(inner, layout.out_channels, 1, activation=None,
                          options=options, rngs=rngs)
    self.residual = layout.residual

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Returns (block output, depthwise output)."""
    h = self.expand(x) if self.expand is not None else x
    depthwise = self.depthwise(h)
    out = self.project(depthwise)
    if self.residual:
      out = out + x
    return out, depthwise


class MobileNetV2(Backbone):
  """MobileNetV2 backbone up to block 16 (`expanded_conv_16/project`)."""

  name = 'mobilenet_v2'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = cls.name
    c.depth_multiplier = 1.0
    # 'deeplab': multiples of 8 only at depth multiplier 1.0 (the reference
    # extractor and its published checkpoints); 'keras': every width rounded
    # to a multiple of 8 (keras.applications.MobileNetV2's alpha).
    c.channel_rounding = 'deeplab'
    # Slim MobileNetV2 BatchNorm (decay 0.997, eps 1e-3; Keras: eps 1e-3).
    c.bn_momentum = 0.997
    c.bn_epsilon = 1e-3
    return c

  @classmethod
  def validate_config(cls, backbone_config: Any, key: str,
                      check: ConfigChecks) -> None:
    b = backbone_config
    check.number_in(f'{key}.depth_multiplier', b.depth_multiplier, 0.0,
                    float('inf'), lo_open=True)
    check.one_of(f'{key}.channel_rounding', b.channel_rounding,
                 CHANNEL_ROUNDINGS)
    validate_batch_norm(b, key, check)

  @classmethod
  def from_config(cls, backbone_config: Any, *, output_stride: int,
                  dtype: Any, depthwise_impl: str,
                  rngs: nnx.Rngs) -> 'MobileNetV2':
    return cls(depth_multiplier=backbone_config.depth_multiplier,
               channel_rounding=backbone_config.channel_rounding,
               output_stride=output_stride,
               options=layer_options(backbone_config, dtype=dtype,
                                     depthwise_impl=depthwise_impl),
               rngs=rngs)

  @classmethod
  def preprocessing(cls, backbone_config: Any) -> Preprocessing:
    del backbone_config  # [-1, 1] at every width.
    return INCEPTION_PREPROCESSING

  def __init__(self, *, depth_multiplier: float = 1.0,
               channel_rounding: str = 'deeplab', output_stride: int = 16,
               options: LayerOptions = LayerOptions(bn_momentum=0.997,
                                                    bn_epsilon=1e-3),
               rngs: nnx.Rngs):
    stem, stem_stride, layouts = mobilenet_v2_layout(
        depth_multiplier, channel_rounding, output_stride)
    self.layouts = tuple(layouts)
    self.output_stride = output_stride
    self.stem = ConvBN(3, stem, 3, strides=stem_stride, activation='relu6',
                       options=options, rngs=rngs)
    self.blocks = nnx.List([
        InvertedResidual(layout, options=options, rngs=rngs)
        for layout in layouts
    ])

  @property
  def out_channels(self) -> int:
    return self.layouts[-1].out_channels

  @property
  def low_level_channels(self) -> int:
    layout = self.layouts[LOW_LEVEL_BLOCK]
    return layout.expanded_channels or layout.in_channels

  def tf_scopes(self) -> dict[str, ConvBN]:
    """`MobilenetV2/Conv`, `MobilenetV2/expanded_conv[_N]/{expand,
    depthwise,project}`: the reference's names."""
    scopes = {f'{TF_SCOPE}/Conv': self.stem}
    for i, block in enumerate(self.blocks):
      prefix = f'{TF_SCOPE}/expanded_conv' + (f'_{i}' if i else '')
      if block.expand is not None:
        scopes[f'{prefix}/expand'] = block.expand
      scopes[f'{prefix}/depthwise'] = block.depthwise
      scopes[f'{prefix}/project'] = block.project
    return scopes

  def __call__(self, images: Array) -> dict[str, Array]:
    """Feature maps of images normalised to [-1, 1].

    Args:
      images: [N, H, W, 3] in [-1, 1] (x / 127.5 - 1).

    Returns:
      'features': [N, ceil(H/os), ceil(W/os), out_channels], the head's input;
      'low_level': [N, ceil(H/4), ceil(W/4), low_level_channels], for the
        decoder; 'stem' and 'block_<i>' for every block output.
    """
    x = self.stem(images)
    endpoints = {'stem': x}
    for i, block in enumerate(self.blocks):
      x, depthwise = block(x)
      endpoints[f'block_{i}'] = x
      if i == LOW_LEVEL_BLOCK:
        endpoints['low_level'] = depthwise
    endpoints['features'] = x
    return endpoints
