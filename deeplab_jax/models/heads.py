"""Encoder heads on top of the backbone features (NHWC).

* `ASPP`: image pooling, a 1x1 branch and atrous separable 3x3 branches,
  concatenated and projected (reference `extract_features`). With no atrous
  rates it is the reference MobileNetV2 head that the published PASCAL
  checkpoints use (image pooling + 1x1 only).
* `DensePredictionCell`: branches wired by a list of specs (the seed's
  `encoder_middle_conf`, the reference `dense_prediction_cell.py`), each
  reading the backbone features or an earlier branch.

`HEADS` maps `config.model.head.type` to a head's `from_config`. Adding a
head: a module with an nnx.Module that has `out_channels`, `tf_scopes()`
and `__call__(features, *, rngs=None)`, and a `from_config(head_config,
in_features, *, output_stride, options, rngs)`; one line in `HEADS`.

Rates passed to the constructors are final dilation rates; `from_config`
scales the config's output-stride-16 rates (`effective_rate_multiplier`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from deeplab_jax.errors import WeightImportError
from deeplab_jax.registry import Registry
from deeplab_jax.models.layers import ConvBN, LayerOptions, SeparableConvBN
from deeplab_jax.ops.dispatch import native_ops_active
from deeplab_jax.ops.pooling import global_average_pool
from deeplab_jax.ops.resize import resize_bilinear

Array = jax.Array


def effective_rate_multiplier(head_config: Any, output_stride: int) -> float:
  """The factor applied to ASPP/DPC rates, which are given at OS 16:
  `conv_rate_multiplier` when set, else 16 / output_stride."""
  if head_config.conv_rate_multiplier is not None:
    return float(head_config.conv_rate_multiplier)
  return 16.0 / output_stride


def separable_tf_scopes(prefix: str, layer: SeparableConvBN
                        ) -> dict[str, ConvBN]:
  """The reference names a split separable conv `<prefix>_depthwise` and
  `<prefix>_pointwise`."""
  return {f'{prefix}_depthwise': layer.depthwise,
          f'{prefix}_pointwise': layer.pointwise}


def scale_rates(rates: Sequence[int], multiplier: float) -> tuple[int, ...]:
  """Rates times multiplier, rounded, at least 1 (OS 32 halves OS 16 rates)."""
  return tuple(max(1, int(round(r * multiplier))) for r in rates)


def common_options(head_config: Any, options: LayerOptions,
                   rngs: nnx.Rngs) -> dict[str, Any]:
  """The constructor arguments every head takes from `config.model.head`."""
  h = head_config
  return dict(channels=h.channels, projection_channels=h.projection_channels,
              separable_depth_multiplier=h.separable_depth_multiplier,
              dropout_rate=h.dropout_rate,
              dropout_on_concat=h.dropout_on_concat,
              dropout_on_projection=h.dropout_on_projection, options=options,
              rngs=rngs)


class _ConcatProjection(nnx.Module):
  """The tail ASPP and the DPC share: concat the branches -> [dropout] ->
  `concat_projection` (1x1, BN, ReLU) -> [dropout]."""

  def _build_tail(self, num_branches: int, channels: int,
                  projection_channels: int, dropout_rate: float,
                  dropout_on_concat: bool, dropout_on_projection: bool,
                  options: LayerOptions, rngs: nnx.Rngs) -> None:
    self.concat_projection = ConvBN(num_branches * channels,
                                    projection_channels, 1, options=options,
                                    rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)
    self.dropout_on_concat = dropout_on_concat
    self.dropout_on_projection = dropout_on_projection
    self.out_channels = projection_channels

  def _dropout(self, x: Array, rngs: nnx.Rngs | None) -> Array:
    # In inference mode not even an identity op, so that traced exports
    # (jax2onnx patches nnx.Dropout's call) see none.
    if self.dropout.deterministic:
      return x
    return self.dropout(x, rngs=rngs)

  def _merge(self, branches: list[Array], rngs: nnx.Rngs | None,
             pooled: Array | None = None) -> Array:
    """Concatenate `pooled` ([N, 1, 1, C], broadcast over H and W: image
    pooling, the reference's first branch) and `branches` ([N, H, W, C]
    each), and project.

    Without dropout on the concatenation the broadcast is never built:
    `project_concatenation` projects the pooled part once per image.
    Exports (`ops.native_ops()`) keep the plain concat and 1x1 conv.
    """
    plain = native_ops_active() or (
        self.dropout_on_concat and not self.dropout.deterministic)
    if pooled is not None and not plain:
      # One product for the per-pixel branches (one large contraction runs
      # faster than several small ones), one per image for the pooled part.
      spatial = (jnp.concatenate(branches, axis=-1) if len(branches) > 1
                 else branches[0])
      x = self.concat_projection.project_concatenation([pooled, spatial])
      if self.dropout_on_projection:
        x = self._dropout(x, rngs)
      return x
    if pooled is not None:
      # Align corners from one pixel: the same vector at every pixel.
      branches = [resize_bilinear(pooled, branches[0].shape[1:3]), *branches]
    x = jnp.concatenate(branches, axis=-1)
    if self.dropout_on_concat:
      x = self._dropout(x, rngs)
    x = self.concat_projection(x)
    if self.dropout_on_projection:
      x = self._dropout(x, rngs)
    return x


class ASPP(_ConcatProjection):
  """Atrous spatial pyramid pooling with separable atrous branches.

  Branch order in the concat follows the reference: [image_pooling, aspp0,
  aspp1, ...]; then `concat_projection` (1x1, BN, ReLU) and dropout.
  """

  def __init__(self, in_features: int, *, channels: int = 256,
               projection_channels: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18),
               image_pooling: bool = True, separable_depth_multiplier: int = 1,
               dropout_rate: float = 0.1, dropout_on_concat: bool = False,
               dropout_on_projection: bool = True,
               options: LayerOptions = LayerOptions(), rngs: nnx.Rngs):
    self.image_pooling = (
        ConvBN(in_features, channels, 1, options=options, rngs=rngs)
        if image_pooling else None)
    self.aspp0 = ConvBN(in_features, channels, 1, options=options, rngs=rngs)
    self.atrous = nnx.List([
        SeparableConvBN(in_features, channels, rate=rate,
                        depth_multiplier=separable_depth_multiplier,
                        options=options, rngs=rngs) for rate in atrous_rates
    ])
    self._build_tail(1 + len(atrous_rates) + int(image_pooling), channels,
                     projection_channels, dropout_rate, dropout_on_concat,
                     dropout_on_projection, options, rngs)

  @classmethod
  def from_config(cls, head_config: Any, in_features: int, *,
                  output_stride: int, options: LayerOptions,
                  rngs: nnx.Rngs) -> 'ASPP':
    multiplier = effective_rate_multiplier(head_config, output_stride)
    return cls(in_features,
               atrous_rates=scale_rates(head_config.atrous_rates, multiplier),
               image_pooling=head_config.image_pooling,
               **common_options(head_config, options, rngs))

  def tf_scopes(self) -> dict[str, ConvBN]:
    """`image_pooling`, `aspp0`, `aspp<i>_{depthwise,pointwise}`,
    `concat_projection`: the reference's names."""
    scopes = {}
    if self.image_pooling is not None:
      scopes['image_pooling'] = self.image_pooling
    scopes['aspp0'] = self.aspp0
    for i, branch in enumerate(self.atrous, 1):
      scopes.update(separable_tf_scopes(f'aspp{i}', branch))
    scopes['concat_projection'] = self.concat_projection
    return scopes

  def __call__(self, features: Array, *, rngs: nnx.Rngs | None = None,
               image_features: Array | None = None) -> Array:
    """[N, h, w, C_in] backbone features -> [N, h, w, projection_channels].

    `image_features` ([N, 1, 1, C_in]) replaces the features' own mean in
    image pooling: a tile of a large image pools the whole image's
    features, not only its own (deeplab_jax/inference/segmenter.py).
    """
    pooled = None
    if self.image_pooling is not None:  # Global average pool -> 1x1 conv.
      if image_features is None:
        image_features = global_average_pool(features)
      pooled = self.image_pooling(image_features.astype(features.dtype))
    branches = [self.aspp0(features)]
    branches.extend(branch(features) for branch in self.atrous)
    return self._merge(branches, rngs, pooled)


@dataclasses.dataclass(frozen=True)
class BranchSpec:
  """One DPC branch: op 'conv' (kernel 1 or 3) or 'pyramid_pooling'."""
  op: str
  kernel: int
  rate: tuple[int, int]
  input: int
  grid_size: tuple[int, int] | None = None

  @classmethod
  def from_config(cls, spec: Mapping[str, Any]) -> 'BranchSpec':
    grid = spec.get('grid_size')
    return cls(op=spec['op'], kernel=int(spec['kernel']),
               rate=tuple(int(r) for r in spec['rate']),
               input=int(spec['input']),
               grid_size=tuple(int(g) for g in grid) if grid else None)


def _pyramid_pool(x: Array, grid: tuple[int, int]) -> Array:
  """The reference's pyramid pooling window: a VALID, stride-1 average pool
  whose window covers 1/grid of the feature map."""
  h, w = x.shape[1], x.shape[2]
  window = (int((h - 1) / grid[0] + 1), int((w - 1) / grid[1] + 1))
  summed = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add,
                             (1, *window, 1), (1, 1, 1, 1), 'VALID')
  return summed / (window[0] * window[1])


class DensePredictionCell(_ConcatProjection):
  """A Dense Prediction Cell (Chen et al. 2018) from a list of branch specs.

  Branch outputs are concatenated in order, dropout (on the concat by
  default, as in the reference), then `concat_projection` (1x1, BN, ReLU).
  """

  def __init__(self, in_features: int, branches: Sequence[Mapping[str, Any]],
               *, channels: int = 256, projection_channels: int = 256,
               rate_multiplier: float = 1.0,
               separable_depth_multiplier: int = 1, dropout_rate: float = 0.1,
               dropout_on_concat: bool = True,
               dropout_on_projection: bool = False,
               options: LayerOptions = LayerOptions(), rngs: nnx.Rngs):
    self.specs = tuple(BranchSpec.from_config(b) for b in branches)
    layers = []
    for spec in self.specs:
      c_in = in_features if spec.input < 0 else channels
      if spec.op == 'conv' and spec.kernel == 3:
        layers.append(
            SeparableConvBN(c_in, channels,
                            rate=scale_rates(spec.rate, rate_multiplier),
                            depth_multiplier=separable_depth_multiplier,
                            options=options, rngs=rngs))
      else:  # 1x1 conv, or the 1x1 conv after pyramid pooling.
        layers.append(ConvBN(c_in, channels, 1, options=options, rngs=rngs))
    self.branches = nnx.List(layers)
    self._build_tail(len(self.specs), channels, projection_channels,
                     dropout_rate, dropout_on_concat, dropout_on_projection,
                     options, rngs)

  @classmethod
  def from_config(cls, head_config: Any, in_features: int, *,
                  output_stride: int, options: LayerOptions,
                  rngs: nnx.Rngs) -> 'DensePredictionCell':
    return cls(in_features, list(head_config.dpc_branches),
               rate_multiplier=effective_rate_multiplier(head_config,
                                                         output_stride),
               **common_options(head_config, options, rngs))

  def tf_scopes(self) -> dict[str, ConvBN]:
    raise WeightImportError(
        'The published DeepLab weights have an ASPP head; this config uses '
        "a Dense Prediction Cell (config.model.head.type = 'dpc'), which no "
        'published checkpoint holds.')

  def __call__(self, features: Array, *, rngs: nnx.Rngs | None = None
               ) -> Array:
    """[N, h, w, C_in] backbone features -> [N, h, w, projection_channels]."""
    outputs = []
    for spec, layer in zip(self.specs, self.branches):
      x = features if spec.input < 0 else outputs[spec.input]
      if spec.op == 'pyramid_pooling':
        y = layer(_pyramid_pool(x, spec.grid_size))
        y = resize_bilinear(y, x.shape[1:3])
      else:
        y = layer(x)
      outputs.append(y)
    return self._merge(outputs, rngs)


HEADS = Registry('head', 'config.model.head.type', {
    'aspp': ASPP.from_config,
    'dpc': DensePredictionCell.from_config,
})
