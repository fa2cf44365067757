"""The layers a backbone, head or decoder is built from (NHWC).

* `ConvBN`: conv -> BatchNorm -> activation, with TF 'SAME' padding (for a
  stride-2 3x3 conv on an even input TF pads 0 before and 1 after, which
  the reference checkpoints were trained with) or the reference's fixed
  padding; `groups == in_features` makes it depthwise.
* `SeparableConvBN`: the reference's split separable conv.
* `BatchNorm`: nnx.BatchNorm's numerics, traced in linear time.

How each conv is computed on each backend lives in deeplab_jax/ops/; a
layer only names the op (`LayerOptions.depthwise_impl`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
# BatchNorm below reuses flax's own statistics and normalisation.
from flax.nnx.nn.normalization import (  # pylint: disable=g-importing-member
    _canonicalize_axes, _compute_stats, _normalize)
from jax import lax

from deeplab_jax.ops.dense import channel_dot, dense_conv_general_dilated
from deeplab_jax.ops.depthwise import CONV_IMPLEMENTATIONS
from deeplab_jax.ops.padding import fixed_padding

Array = jax.Array

ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
    'relu': jax.nn.relu,
    'relu6': jax.nn.relu6,
    None: lambda x: x,
}

# He-normal (truncated) for convs followed by BatchNorm.
he_init = nnx.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Settings every conv+BN layer of one part of the network shares."""
  bn_momentum: float = 0.9997
  bn_epsilon: float = 1e-5
  bn_scale: bool = True
  dtype: jnp.dtype | None = None  # Compute dtype; None: float32.
  depthwise_impl: str = 'auto'


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm with the same numerics, whose training-mode update of
  the moving statistics replaces their values (`set_value(new)`).

  Why: flax writes them as `mean[...] = new`, which probes `new.sharding`;
  on a tracer that raises an AttributeError whose message walks every
  equation traced so far (jax-ml/jax#40041), making the trace of a train
  step quadratic in its length (half of the tiny test model's trace).
  """

  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average is not False:  # Inference (or flax's error).
      return super().__call__(x, use_running_average, mask=mask)
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    x, _, _, scale, bias = self.promote_dtype(
        (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
    mean, var = _compute_stats(
        x, reduction_axes, dtype=self.dtype, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups,
        use_fast_variance=self.use_fast_variance, mask=mask)
    stop_gradient = (jax.lax.stop_gradient
                     if self.mean._can_update or self.var._can_update  # pylint: disable=protected-access
                     else lambda v: v)
    self.mean.set_value(stop_gradient(
        self.momentum * self.mean[...] + (1 - self.momentum) * mean))
    self.var.set_value(stop_gradient(
        self.momentum * self.var[...] + (1 - self.momentum) * var))
    return _normalize(x, mean, var, scale, bias, reduction_axes,
                      feature_axes, self.dtype, self.epsilon)


class ConvBN(nnx.Module):
  """Conv -> BatchNorm -> activation.

  `groups == in_features` makes it a depthwise conv (channel multiplier
  out_features // in_features). Padding is TF 'SAME'; `explicit_padding`
  pads a strided conv by `fixed_padding` instead, as the reference's ResNet
  and Xception (`conv2d_same`, `separable_conv2d_same`) and Keras's ResNet
  do (the two differ on even inputs). `use_bias` adds a conv bias before
  the BatchNorm (Keras's ResNet has one; the reference's convs do not).
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int = 1, *, strides: int = 1,
               rate: int | Sequence[int] = 1, groups: int = 1,
               activation: str | None = 'relu',
               explicit_padding: bool = False, use_bias: bool = False,
               options: LayerOptions = LayerOptions(), rngs: nnx.Rngs):
    conv_fn = (CONV_IMPLEMENTATIONS[options.depthwise_impl]
               if groups > 1 else dense_conv_general_dilated)
    rate = (rate, rate) if isinstance(rate, int) else tuple(rate)
    padding = 'SAME'
    if explicit_padding and strides > 1:
      # For stride 1 TF 'SAME' already is the symmetric fixed padding.
      padding = tuple(fixed_padding(kernel_size, r) for r in rate)
    self.conv = nnx.Conv(
        in_features, out_features, (kernel_size, kernel_size),
        strides=strides, padding=padding, kernel_dilation=rate,
        feature_group_count=groups, use_bias=use_bias, dtype=options.dtype,
        kernel_init=he_init, conv_general_dilated=conv_fn, rngs=rngs)
    self.bn = BatchNorm(
        out_features, momentum=options.bn_momentum,
        epsilon=options.bn_epsilon, use_scale=options.bn_scale,
        dtype=options.dtype, rngs=rngs)
    self.activation = activation

  def __call__(self, x: Array) -> Array:
    x = self.conv(x)
    return self._normalize_and_activate(x)

  def _normalize_and_activate(self, x: Array) -> Array:
    if self.bn is not None:
      x = self.bn(x)
    return ACTIVATIONS[self.activation](x)

  def project_concatenation(self, parts: Sequence[Array]) -> Array:
    """`self(jnp.concatenate(parts, axis=-1))` for a 1x1 stride-1 conv,
    where a part may be [N, 1, 1, C_i] and broadcast over H and W.

    The conv of a concatenation is the sum of each part's conv by its slice
    of the kernel, so a spatially constant part (ASPP's image pooling) is
    projected once per image, not once per pixel: half of the reference
    MobileNetV2 head's largest matrix product. Same values up to float
    rounding (the order of the sum).

    Args:
      parts: [N, H_i, W_i, C_i] arrays that broadcast to [N, H, W, *];
        sum(C_i) = in_features.

    Returns:
      [N, H, W, out_features], normalised and activated.
    """
    conv = self.conv
    if conv.kernel_size != (1, 1) or conv.strides not in (1, (1, 1)):
      raise ValueError('project_concatenation needs a 1x1 stride-1 conv, '
                       f'not {conv.kernel_size} stride {conv.strides}')
    kernel = conv.kernel[...]
    if sum(p.shape[-1] for p in parts) != kernel.shape[2]:
      raise ValueError(f'parts of {[p.shape[-1] for p in parts]} channels '
                       f'for a conv of {kernel.shape[2]} inputs')
    bias = conv.bias[...] if conv.bias is not None else None
    *parts, kernel, bias = conv.promote_dtype((*parts, kernel, bias),
                                              dtype=conv.dtype)
    out, start = None, 0
    for part in parts:
      channels = part.shape[-1]
      y = channel_dot(part, kernel[0, 0, start:start + channels],
                       conv.precision)
      out = y if out is None else out + y
      start += channels
    if bias is not None:
      out = out + bias
    return self._normalize_and_activate(out)

  def fold_batch_norm(self) -> None:
    """In place, for inference only: BatchNorm's inference affine (moving
    statistics) goes into the conv's kernel and a new bias, and the BN
    layer is removed, so that the conv's output needs no normalisation
    pass. Traceable: works on concrete arrays and inside `jax.jit`."""
    bn = self.bn
    if bn is None:
      return
    factor = lax.rsqrt(bn.var[...] + bn.epsilon)
    if bn.scale is not None:
      factor = factor * bn.scale[...]
    conv_bias = self.conv.bias[...] if self.conv.bias is not None else 0.0
    bias = (conv_bias - bn.mean[...]) * factor
    if bn.bias is not None:
      bias = bias + bn.bias[...]
    # HWIO kernel: the output channel is the last axis, also for depthwise
    # kernels ([kh, kw, 1, C * multiplier]).
    self.conv.kernel[...] = self.conv.kernel[...] * factor
    if self.conv.bias is not None:
      self.conv.bias[...] = bias
    else:
      self.conv.bias = nnx.Param(bias)
    self.conv.use_bias = True
    self.bn = None


class SeparableConvBN(nnx.Module):
  """The reference `split_separable_conv2d`.

  depthwise 3x3 (rate) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU; unlike
  Keras's SeparableConv2D it normalises and activates between the two.
  """

  def __init__(self, in_features: int, out_features: int, *,
               kernel_size: int = 3, rate: int | Sequence[int] = 1,
               depth_multiplier: int = 1,
               options: LayerOptions = LayerOptions(), rngs: nnx.Rngs):
    self.depthwise = ConvBN(
        in_features, in_features * depth_multiplier, kernel_size, rate=rate,
        groups=in_features, activation='relu', options=options, rngs=rngs)
    self.pointwise = ConvBN(
        in_features * depth_multiplier, out_features, 1, activation='relu',
        options=options, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.pointwise(self.depthwise(x))
