"""ResNet v1 (50 and 101 layers) feature extractors, as DeepLab uses them.

Two layouts of the same bottleneck network (same layers, same parameter
shapes), which differ in where a block subsamples:

* 'reference': the reference DeepLab's `resnet_v1_beta.py` (slim): a block
  subsamples in its *last* unit, in the 3x3 conv (`conv2`, explicitly
  padded), the shortcut of an equal-width unit is a 1x1 max-pool with the
  stride, convolutions have no bias. Blocks 1-3 have stride 2, block 4
  stride 1 with `multi_grid` unit rates; the nominal output stride is 32.
  `stem='beta'` replaces the 7x7 stem conv by three 3x3 convs
  (`resnet_v1_*_beta`). This is the layout of the zoo's TF checkpoints.
* 'keras': `keras.applications.ResNet50/101`: a block subsamples in its
  *first* unit, in the first 1x1 conv and the 1x1 shortcut conv, every conv
  has a bias, BatchNorm epsilon is 1.001e-5 and the stem's max-pool pads
  1 on each side. Its ImageNet weights initialise this layout.

Atrous conversion (`output_stride` 8 or 16) follows `stack_blocks_dense`:
once the running stride equals the target, a unit's stride becomes 1 and
the rate grows by it. The decoder's low-level input is the reference's
`block1/unit_2/bottleneck_v1/conv3` endpoint: the BatchNorm output of the
second unit's last conv, before the residual sum and ReLU (256 channels,
stride 4).
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
from deeplab_jax.ops.padding import tf_same_padding
from deeplab_jax.ops.pooling import max_pool

Array = jax.Array

# Units per block.
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BOTTLENECK_WIDTHS = (64, 128, 256, 512)  # Output: 4x.
STEMS = ('7x7', 'beta')
LAYOUTS = ('reference', 'keras')
# The reference's `_preprocess_subtract_imagenet_mean` (7x7 stem); the beta
# stem's checkpoints were trained on [-1, 1].
REFERENCE_MEAN_RGB = (123.15, 115.90, 103.06)
# Keras's 'caffe' preprocessing (BGR means, listed here in RGB order; the
# Keras importer flips the stem kernel's input channels so that ours takes
# RGB).
KERAS_MEAN_RGB = (123.68, 116.779, 103.939)
KERAS_BN_EPSILON = 1.001e-5
# The decoder's input: block 1, unit 2 (0-based 1), conv3.
LOW_LEVEL_UNIT = 1


@dataclasses.dataclass(frozen=True)
class UnitLayout:
  """One bottleneck unit after atrous conversion."""
  in_channels: int
  bottleneck_channels: int
  out_channels: int
  stride: int  # Applied (1 once the output stride is reached).
  rate: int  # Dilation of the 3x3 conv.


def resnet_layout(depth: int, layout: str, output_stride: int,
                  multi_grid=(1, 1, 1), stem_channels: int = 64
                  ) -> list[list[UnitLayout]]:
  """Units of the four blocks for `output_stride` (8, 16 or 32)."""
  nominal = []  # (block, unit, bottleneck width, stride)
  for b, (n, width) in enumerate(zip(DEPTHS[depth], BOTTLENECK_WIDTHS)):
    if layout == 'reference':  # Blocks 1-3 subsample in their last unit.
      strides = [1] * (n - 1) + [2 if b < 3 else 1]
    else:  # Blocks 2-4 subsample in their first unit.
      strides = [2 if b > 0 else 1] + [1] * (n - 1)
    nominal.extend((b, u, width, s) for u, s in enumerate(strides))
  # The stem (stride 2) and its max-pool (stride 2) are never converted.
  schedule = atrous_schedule([s for *_, s in nominal], output_stride // 4)
  blocks: list[list[UnitLayout]] = [[] for _ in DEPTHS[depth]]
  c_in = stem_channels
  for (b, u, width, nominal_stride), (stride, rate) in zip(nominal, schedule):
    if layout == 'keras' and stride == 1 and nominal_stride > 1:
      # The stride sits before the 3x3 conv here, so a converted unit's
      # 3x3 already sees the denser map: it takes the grown rate.
      rate *= nominal_stride
    if b == 3:
      rate *= multi_grid[u]
    blocks[b].append(UnitLayout(c_in, width, 4 * width, stride, rate))
    c_in = 4 * width
  return blocks


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride, rate) -> 1x1 (no ReLU), + shortcut, ReLU."""

  def __init__(self, unit: UnitLayout, *, layout: str, options: LayerOptions,
               rngs: nnx.Rngs):
    keras = layout == 'keras'
    common = dict(use_bias=keras, options=options, rngs=rngs)
    self.shortcut = (
        ConvBN(unit.in_channels, unit.out_channels, 1, strides=unit.stride,
               activation=None, **common)
        if unit.in_channels != unit.out_channels else None)
    self.conv1 = ConvBN(unit.in_channels, unit.bottleneck_channels, 1,
                        strides=unit.stride if keras else 1, **common)
    self.conv2 = ConvBN(unit.bottleneck_channels, unit.bottleneck_channels, 3,
                        strides=1 if keras else unit.stride, rate=unit.rate,
                        explicit_padding=True, **common)
    self.conv3 = ConvBN(unit.bottleneck_channels, unit.out_channels, 1,
                        activation=None, **common)
    self.stride = unit.stride

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Returns (unit output, conv3's BatchNorm output before the sum)."""
    if self.shortcut is not None:
      shortcut = self.shortcut(x)
    else:  # slim's `subsample`: a 1x1 max-pool, i.e. strided slicing.
      shortcut = x[:, ::self.stride, ::self.stride] if self.stride > 1 else x
    residual = self.conv3(self.conv2(self.conv1(x)))
    return jax.nn.relu(shortcut + residual), residual


def _max_pool_3x3_s2(x: Array, layout: str) -> Array:
  """The stem's 3x3 stride-2 max-pool: TF 'SAME' (reference) or 1 pixel of
  padding on each side (Keras's ZeroPadding2D(1) + VALID; the input is a
  ReLU output, so zero padding equals -inf padding)."""
  pads = tuple(tf_same_padding(n, 3, 2) if layout == 'reference' else (1, 1)
               for n in x.shape[1:3])
  return max_pool(x, (3, 3), (2, 2), pads)


class ResNetV1(Backbone):
  """ResNet v1 50/101 up to block 4 (`resnet_v1_<depth>/block4`)."""

  name = 'resnet_v1'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = cls.name
    c.depth = 50  # 50 | 101
    # '7x7': resnet_v1_<depth>; 'beta': resnet_v1_<depth>_beta (three 3x3
    # stem convs, [-1, 1] input), the zoo's ImageNet checkpoints.
    c.stem = '7x7'
    # 'reference' (slim, the zoo's checkpoints) | 'keras' (keras.applications,
    # its ImageNet weights): see the module docstring.
    c.layout = 'reference'
    # Unit rates of block 4, multiplied with the atrous rate (the DeepLab
    # paper's (1, 2, 4); the reference code's default is (1, 1, 1)).
    c.multi_grid = (1, 2, 4)
    # The reference DeepLab's ResNet BatchNorm: decay 0.95, epsilon 1e-5.
    c.bn_momentum = 0.95
    c.bn_epsilon = 1e-5
    return c

  @classmethod
  def validate_config(cls, backbone_config: Any, key: str,
                      check: ConfigChecks) -> None:
    b = backbone_config
    check.one_of(f'{key}.depth', b.depth, tuple(DEPTHS))
    check.one_of(f'{key}.stem', b.stem, STEMS)
    check.one_of(f'{key}.layout', b.layout, LAYOUTS)
    if b.layout == 'keras' and b.stem != '7x7':
      check.one_of(f'{key}.stem', b.stem, ('7x7',))  # Keras has no beta stem.
    validate_multi_grid(b.multi_grid, f'{key}.multi_grid', check)
    validate_batch_norm(b, key, check)

  @classmethod
  def from_config(cls, backbone_config: Any, *, output_stride: int,
                  dtype: Any, depthwise_impl: str,
                  rngs: nnx.Rngs) -> 'ResNetV1':
    b = backbone_config
    return cls(depth=b.depth, stem=b.stem, layout=b.layout,
               multi_grid=tuple(b.multi_grid), output_stride=output_stride,
               options=layer_options(b, dtype=dtype,
                                     depthwise_impl=depthwise_impl),
               rngs=rngs)

  @classmethod
  def preprocessing(cls, backbone_config: Any) -> Preprocessing:
    if backbone_config.layout == 'keras':
      return Preprocessing(mean=KERAS_MEAN_RGB, scale=(1.0, 1.0, 1.0))
    if backbone_config.stem == 'beta':
      return INCEPTION_PREPROCESSING
    return Preprocessing(mean=REFERENCE_MEAN_RGB, scale=(1.0, 1.0, 1.0))

  def __init__(self, *, depth: int = 50, stem: str = '7x7',
               layout: str = 'reference', multi_grid=(1, 2, 4),
               output_stride: int = 16,
               options: LayerOptions = LayerOptions(bn_momentum=0.95,
                                                    bn_epsilon=1e-5),
               rngs: nnx.Rngs):
    if layout == 'keras':
      options = dataclasses.replace(options, bn_epsilon=KERAS_BN_EPSILON)
    keras = layout == 'keras'
    self.depth, self.stem_type, self.layout = depth, stem, layout
    self.output_stride = output_stride
    if stem == 'beta':
      stem_out = 128
      self.stem = nnx.List([
          ConvBN(3, 64, 3, strides=2, explicit_padding=True, options=options,
                 rngs=rngs),
          ConvBN(64, 64, 3, options=options, rngs=rngs),
          ConvBN(64, 128, 3, options=options, rngs=rngs),
      ])
    else:
      stem_out = 64
      self.stem = nnx.List([
          ConvBN(3, 64, 7, strides=2, explicit_padding=True, use_bias=keras,
                 options=options, rngs=rngs)
      ])
    layouts = resnet_layout(depth, layout, output_stride, multi_grid,
                            stem_out)
    self.layouts = tuple(tuple(block) for block in layouts)
    self.blocks = nnx.List([
        nnx.List([
            Bottleneck(unit, layout=layout, options=options, rngs=rngs)
            for unit in block
        ]) for block in self.layouts
    ])

  @property
  def out_channels(self) -> int:
    return self.layouts[-1][-1].out_channels

  @property
  def low_level_channels(self) -> int:
    return self.layouts[0][LOW_LEVEL_UNIT].out_channels

  @property
  def tf_scope(self) -> str:
    # `resnet_v1_50` also for the beta variant, as the reference names it.
    return f'resnet_v1_{self.depth}'

  def tf_scopes(self) -> dict[str, ConvBN]:
    """`resnet_v1_<depth>/conv1` (or conv1_1..3), `.../block<b>/unit_<u>/
    bottleneck_v1/{shortcut,conv1,conv2,conv3}`: the reference's names."""
    scope = self.tf_scope
    if self.stem_type == 'beta':
      scopes = {f'{scope}/conv1_{i}': conv
                for i, conv in enumerate(self.stem, 1)}
    else:
      scopes = {f'{scope}/conv1': self.stem[0]}
    for b, block in enumerate(self.blocks, 1):
      for u, unit in enumerate(block, 1):
        prefix = f'{scope}/block{b}/unit_{u}/bottleneck_v1'
        if unit.shortcut is not None:
          scopes[f'{prefix}/shortcut'] = unit.shortcut
        scopes[f'{prefix}/conv1'] = unit.conv1
        scopes[f'{prefix}/conv2'] = unit.conv2
        scopes[f'{prefix}/conv3'] = unit.conv3
    return scopes

  def __call__(self, images: Array) -> dict[str, Array]:
    """Feature maps of normalised images.

    Args:
      images: [N, H, W, 3], normalised as `preprocessing` says (mean
        subtracted for the 7x7 stem, [-1, 1] for the beta stem).

    Returns:
      'features': [N, ceil(H/os), ceil(W/os), 2048], the head's input;
      'low_level': [N, ceil(H/4), ceil(W/4), 256], block 1 unit 2's conv3
        before the residual sum (the reference's decoder endpoint);
      'stem' (after the max-pool, stride 4) and 'block1'..'block4'.
    """
    x = images
    for conv in self.stem:
      x = conv(x)
    x = _max_pool_3x3_s2(x, self.layout)
    endpoints = {'stem': x}
    for b, block in enumerate(self.blocks, 1):
      for u, unit in enumerate(block):
        x, residual = unit(x)
        if b == 1 and u == LOW_LEVEL_UNIT:
          endpoints['low_level'] = residual
      endpoints[f'block{b}'] = x
    endpoints['features'] = x
    return endpoints
