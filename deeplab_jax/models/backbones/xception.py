"""Xception-65 feature extractor, as the reference DeepLab defines it
(`research/deeplab/core/xception.py`, `xception_65`).

The aligned Xception of the DeepLabV3+ paper: every max-pool of the original
is a stride-2 separable conv, BatchNorm follows both the depthwise and the
pointwise conv of every separable conv, and the network is

  entry flow: conv1_1 (3x3, 32, stride 2), conv1_2 (3x3, 64),
              block1 (128), block2 (256), block3 (728), stride 2 each;
  middle flow: block1, 16 units of 728 with identity shortcuts;
  exit flow: block1 (728, 1024, 1024; stride 2),
             block2 (1536, 1536, 2048; no shortcut, ReLU inside the
             separable convs, unit rates `multi_grid`).

An Xception module is three separable convs (the third carries the unit's
stride) plus a shortcut ('conv': 1x1 conv + BN with the stride, 'sum':
identity, 'none'). Outside exit-flow block 2 each separable conv is
ReLU -> depthwise -> BN -> pointwise -> BN (no activation inside); in it,
depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU. Strided convs pad
explicitly (`fixed_padding`). Atrous conversion follows
`stack_blocks_dense` over the units after the stride-2 stem.
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
                                               validate_batch_norm,
                                               validate_multi_grid)
from deeplab_jax.models.layers import ConvBN, LayerOptions

Array = jax.Array

TF_SCOPE = 'xception_65'


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block of the reference's `xception_65_factory`."""
  scope: str
  depths: tuple[int, int, int]
  skip: str  # 'conv' | 'sum' | 'none'
  activation_inside: bool  # activation_fn_in_separable_conv
  units: int
  stride: int


XCEPTION_65 = (
    BlockSpec('entry_flow/block1', (128, 128, 128), 'conv', False, 1, 2),
    BlockSpec('entry_flow/block2', (256, 256, 256), 'conv', False, 1, 2),
    BlockSpec('entry_flow/block3', (728, 728, 728), 'conv', False, 1, 2),
    BlockSpec('middle_flow/block1', (728, 728, 728), 'sum', False, 16, 1),
    BlockSpec('exit_flow/block1', (728, 1024, 1024), 'conv', False, 1, 2),
    BlockSpec('exit_flow/block2', (1536, 1536, 2048), 'none', True, 1, 1),
)
# The decoder reads 'entry_flow/block2/unit_1/xception_module/
# separable_conv2_pointwise': block 2's second separable conv (stride 4,
# 256 channels, BatchNorm output without ReLU).
LOW_LEVEL_BLOCK = 'entry_flow/block2'
LOW_LEVEL_CONV = 1


@dataclasses.dataclass(frozen=True)
class UnitLayout:
  """One Xception module after atrous conversion."""
  scope: str  # e.g. 'middle_flow/block1/unit_3'
  in_channels: int
  depths: tuple[int, int, int]
  skip: str
  activation_inside: bool
  stride: int
  rates: tuple[int, int, int]  # Of the three separable convs.


def xception_layout(output_stride: int, multi_grid=(1, 1, 1)
                    ) -> list[UnitLayout]:
  """Every Xception module of Xception-65 for `output_stride` (8/16/32)."""
  specs = [(spec, u) for spec in XCEPTION_65 for u in range(spec.units)]
  # The stem's stride-2 conv is never converted.
  schedule = atrous_schedule([spec.stride for spec, _ in specs],
                             output_stride // 2)
  units, c_in = [], 64
  for (spec, u), (stride, rate) in zip(specs, schedule):
    unit_rates = (tuple(multi_grid) if spec.scope == 'exit_flow/block2'
                  else (1, 1, 1))
    units.append(UnitLayout(f'{spec.scope}/unit_{u + 1}', c_in, spec.depths,
                            spec.skip, spec.activation_inside, stride,
                            tuple(rate * r for r in unit_rates)))
    c_in = spec.depths[-1]
  return units


class SeparableConv(nnx.Module):
  """`separable_conv2d_same` with BN after both convs (depth multiplier 1)."""

  def __init__(self, in_features: int, out_features: int, *, stride: int,
               rate: int, activation_inside: bool, options: LayerOptions,
               rngs: nnx.Rngs):
    activation = 'relu' if activation_inside else None
    self.depthwise = ConvBN(in_features, in_features, 3, strides=stride,
                            rate=rate, groups=in_features,
                            activation=activation, explicit_padding=True,
                            options=options, rngs=rngs)
    self.pointwise = ConvBN(in_features, out_features, 1,
                            activation=activation, options=options, rngs=rngs)
    self.activation_inside = activation_inside

  def __call__(self, x: Array) -> Array:
    if not self.activation_inside:  # The original design: ReLU first.
      x = jax.nn.relu(x)
    return self.pointwise(self.depthwise(x))


class XceptionModule(nnx.Module):
  """Three separable convs (+ shortcut); see the module docstring."""

  def __init__(self, unit: UnitLayout, *, options: LayerOptions,
               rngs: nnx.Rngs):
    c_in = unit.in_channels
    convs = []
    for i, (depth, rate) in enumerate(zip(unit.depths, unit.rates)):
      convs.append(SeparableConv(
          c_in, depth, stride=unit.stride if i == 2 else 1, rate=rate,
          activation_inside=unit.activation_inside, options=options,
          rngs=rngs))
      c_in = depth
    self.separable = nnx.List(convs)
    self.shortcut = (
        ConvBN(unit.in_channels, unit.depths[-1], 1, strides=unit.stride,
               activation=None, options=options, rngs=rngs)
        if unit.skip == 'conv' else None)
    self.skip = unit.skip

  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    """Returns (module output, the three separable convs' outputs)."""
    residual, outputs = x, []
    for conv in self.separable:
      residual = conv(residual)
      outputs.append(residual)
    if self.skip == 'conv':
      residual = residual + self.shortcut(x)
    elif self.skip == 'sum':
      residual = residual + x
    return residual, outputs


class Xception65(Backbone):
  """Xception-65 up to the exit flow (`xception_65/exit_flow/block2`)."""

  name = 'xception_65'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = cls.name
    # Unit rates of the last block's three separable convs (the reference's
    # default (1, 1, 1); the DeepLab paper also reports (1, 2, 4)).
    c.multi_grid = (1, 1, 1)
    # The reference DeepLab's Xception BatchNorm: decay 0.9997, eps 1e-3.
    c.bn_momentum = 0.9997
    c.bn_epsilon = 1e-3
    return c

  @classmethod
  def validate_config(cls, backbone_config: Any, key: str,
                      check: ConfigChecks) -> None:
    b = backbone_config
    validate_multi_grid(b.multi_grid, f'{key}.multi_grid', check)
    validate_batch_norm(b, key, check)

  @classmethod
  def from_config(cls, backbone_config: Any, *, output_stride: int,
                  dtype: Any, depthwise_impl: str,
                  rngs: nnx.Rngs) -> 'Xception65':
    return cls(multi_grid=tuple(backbone_config.multi_grid),
               output_stride=output_stride,
               options=layer_options(backbone_config, dtype=dtype,
                                     depthwise_impl=depthwise_impl),
               rngs=rngs)

  @classmethod
  def preprocessing(cls, backbone_config: Any) -> Preprocessing:
    del backbone_config
    return INCEPTION_PREPROCESSING

  def __init__(self, *, multi_grid=(1, 1, 1), output_stride: int = 16,
               options: LayerOptions = LayerOptions(bn_momentum=0.9997,
                                                    bn_epsilon=1e-3),
               rngs: nnx.Rngs):
    self.output_stride = output_stride
    self.conv1_1 = ConvBN(3, 32, 3, strides=2, explicit_padding=True,
                          options=options, rngs=rngs)
    self.conv1_2 = ConvBN(32, 64, 3, options=options, rngs=rngs)
    self.layouts = tuple(xception_layout(output_stride, multi_grid))
    self.units = nnx.List([
        XceptionModule(unit, options=options, rngs=rngs)
        for unit in self.layouts
    ])

  @property
  def out_channels(self) -> int:
    return self.layouts[-1].depths[-1]

  @property
  def low_level_channels(self) -> int:
    return XCEPTION_65[1].depths[LOW_LEVEL_CONV]

  def tf_scopes(self) -> dict[str, ConvBN]:
    """`xception_65/entry_flow/conv1_{1,2}`, `.../<flow>/block<b>/unit_<u>/
    xception_module/{separable_conv<i>_{depthwise,pointwise},shortcut}`."""
    scopes = {f'{TF_SCOPE}/entry_flow/conv1_1': self.conv1_1,
              f'{TF_SCOPE}/entry_flow/conv1_2': self.conv1_2}
    for layout, unit in zip(self.layouts, self.units):
      prefix = f'{TF_SCOPE}/{layout.scope}/xception_module'
      for i, conv in enumerate(unit.separable, 1):
        scopes[f'{prefix}/separable_conv{i}_depthwise'] = conv.depthwise
        scopes[f'{prefix}/separable_conv{i}_pointwise'] = conv.pointwise
      if unit.shortcut is not None:
        scopes[f'{prefix}/shortcut'] = unit.shortcut
    return scopes

  def __call__(self, images: Array) -> dict[str, Array]:
    """Feature maps of images normalised to [-1, 1].

    Args:
      images: [N, H, W, 3] in [-1, 1] (x / 127.5 - 1).

    Returns:
      'features': [N, ceil(H/os), ceil(W/os), 2048], the head's input;
      'low_level': [N, ceil(H/4), ceil(W/4), 256] for the decoder;
      'stem' (stride 2) and '<flow>/block<b>' for every block's output.
    """
    x = self.conv1_2(self.conv1_1(images))
    endpoints = {'stem': x}
    for layout, unit in zip(self.layouts, self.units):
      x, separable = unit(x)
      block = layout.scope.rsplit('/', 1)[0]
      if block == LOW_LEVEL_BLOCK:
        endpoints['low_level'] = separable[LOW_LEVEL_CONV]
      endpoints[block] = x
    endpoints['features'] = x
    return endpoints
