"""Building blocks shared by the backbone, heads and decoder (all NHWC).

* Convolutions use TF 'SAME' padding: for a stride-2 3x3 conv on an even
  input, TF pads 0 before and 1 after (PyTorch pads 1 on both sides), which
  is what the reference checkpoints were trained with. `lax` implements the TF
  rule for padding='SAME', dilation included.
* Depthwise convolutions go through `depthwise_conv_general_dilated`, which
  computes them as a sum of shifted slices on XLA:CPU, where a
  `feature_group_count` convolution is 5-30x slower, and with the native
  grouped convolution elsewhere. The shifted sum has its own VJP: the input
  gradient is again a shifted sum (with the flipped kernel, over the dilated
  output gradient) and the kernel gradient is one reduction per tap, so the
  backward pass costs about as much as the forward.
* 1x1 stride-1 convolutions are one matrix product on XLA:CPU, whose
  kernel gradient is a GEMM (XLA:CPU's own is a whole-map convolution
  that ran at 2 GFLOP/s); other dense convolutions (`dense_conv`) keep
  XLA's forward (but the 3x3 RGB stems: broadcast multiply-adds) and input
  gradient and take their kernel gradient as one GEMM per tap;
  `ConvBN.fold_batch_norm` folds BatchNorm into the conv for
  inference-only copies (`models.fold_batch_norm`).
* `resize_bilinear` has align-corners semantics (TF1
  `resize_bilinear(align_corners=True)`), which the reference uses
  everywhere; `jax.image.resize` uses half-pixel centres instead. Each axis
  is a two-tap blend of gathered rows whose gradient is the interpolation
  matrix's transpose (logits 129 -> 513 at batch 4: 37 ms forward against
  168 ms as a matrix product).
* `max_pool` (the ResNet stem's) sends its gradient to each window's first
  maximum with pads and sums on XLA:CPU, where the native gradient's
  select-and-scatter becomes argmax index arrays and a scatter.
* `ConvBN.project_concatenation`: a 1x1 conv of a concatenation as a sum
  of per-part products, so that ASPP projects its (spatially constant)
  image-pooling branch once per image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
# BatchNorm below reuses flax's own statistics and normalisation.
from flax.nnx.nn.normalization import (  # pylint: disable=g-importing-member
    _canonicalize_axes, _compute_stats, _normalize)
from jax import lax

Array = jax.Array

# ------------------------------------------------------------ TF padding


def tf_same_padding(size: int, kernel: int, stride: int,
                    rate: int = 1) -> tuple[int, int]:
  """(before, after) padding of TF 'SAME' for one spatial axis."""
  effective = (kernel - 1) * rate + 1
  out = -(-size // stride)
  total = max((out - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


# ------------------------------------------------- shifted-sum depthwise


def _tap_slice(x: Array, i: int, j: int, out_hw: tuple[int, int],
               strides: tuple[int, int], rates: tuple[int, int]) -> Array:
  """x[:, i*rh :: sh][:out_h], x[:, :, j*rw :: sw][:out_w] as one slice."""
  (sh, sw), (rh, rw), (oh, ow) = strides, rates, out_hw
  start = (0, i * rh, j * rw, 0)
  limit = (x.shape[0], i * rh + (oh - 1) * sh + 1, j * rw + (ow - 1) * sw + 1,
           x.shape[3])
  return lax.slice(x, start, limit, (1, sh, sw, 1))


def fixed_padding(kernel: int, rate: int = 1) -> tuple[int, int]:
  """(before, after) of the reference's `fixed_padding` (`conv2d_same`):
  independent of the input size, so that a stride-2 conv on an even input
  samples the same pixels as on an odd one (TF 'SAME' would pad 0 before)."""
  total = (kernel - 1) * rate
  return total // 2, total - total // 2


def _padded_geometry(hw, kernel_hw, strides, rates, padding='SAME'):
  """((before, after) per axis, output size per axis) for 'SAME', 'VALID'
  or explicit ((top, bottom), (left, right)) padding."""
  if padding == 'SAME':
    pads = tuple(
        tf_same_padding(n, k, s, r)
        for n, k, s, r in zip(hw, kernel_hw, strides, rates))
  elif padding == 'VALID':
    pads = ((0, 0), (0, 0))
  else:
    pads = tuple(tuple(p) for p in padding)
  out_hw = tuple((n + b + a - (k - 1) * r - 1) // s + 1
                 for n, k, s, r, (b, a) in zip(hw, kernel_hw, strides, rates,
                                               pads))
  return pads, out_hw


def _padded_taps(x: Array, kernel_hw: tuple[int, int],
                strides: tuple[int, int], rates: tuple[int, int],
                padding: str | tuple = 'SAME'
                ) -> list[tuple[tuple[int, int], Array]]:
  """((i, j), the [N, H', W', C] slice of the zero-padded x that kernel
  tap (i, j) meets at every output position) for each tap, row by row: a
  kh x kw conv is sum over taps of slice (x) w[i, j]."""
  kh, kw = kernel_hw
  pads, out_hw = _padded_geometry(x.shape[1:3], (kh, kw), strides, rates,
                                  padding)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return [((i, j), _tap_slice(xp, i, j, out_hw, strides, rates))
          for i in range(kh) for j in range(kw)]


def shifted_sum_autodiff(x, w, strides, rates, padding='SAME'):
  """The shifted-sum depthwise conv without the custom VJP (JAX autodiff
  differentiates it): what `shifted_depthwise_conv` computes, for
  benchmarks/depthwise.py's comparison of the two backward passes."""
  out = None
  for (i, j), tap in _padded_taps(x, w.shape[:2], strides, rates, padding):
    term = tap * w[i, j, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def shifted_depthwise_conv(x: Array, w: Array, strides: tuple[int, int],
                           rates: tuple[int, int],
                           padding: str | tuple = 'SAME') -> Array:
  """Depthwise conv (channel multiplier 1).

  Args:
    x: [N, H, W, C] input.
    w: [kh, kw, 1, C] kernel (the HWIO layout of a grouped conv).
    strides: (stride_h, stride_w).
    rates: (dilation_h, dilation_w).
    padding: TF 'SAME', 'VALID', or ((top, bottom), (left, right)) as a
      tuple of tuples.

  Returns:
    [N, H', W', C]: ceil(H / stride_h) x ceil(W / stride_w) for 'SAME'.
  """
  return shifted_sum_autodiff(x, w, strides, rates, padding)


def _shifted_fwd(x, w, strides, rates, padding):
  return shifted_sum_autodiff(x, w, strides, rates, padding), (x, w)


def _shifted_bwd(strides, rates, padding, residuals, g):
  x, w = residuals
  kh, kw = w.shape[0], w.shape[1]
  h, wd = x.shape[1], x.shape[2]
  pads, out_hw = _padded_geometry((h, wd), (kh, kw), strides, rates, padding)
  # Products accumulate in float32 at least: a bfloat16 sum of a row of 257
  # products keeps 8 bits of the kernel gradient.
  acc = jnp.promote_types(g.dtype, jnp.float32)
  # Kernel gradient: sum over N, H, W of (tap slice * g) for every tap, as
  # one variadic reduction so that XLA makes a single pass over x and g
  # (nine separate reductions are ~1.6x slower on XLA:CPU). It reduces over
  # W only, to [N, H, C] per tap, then sums those small rows: XLA:CPU
  # splits a reduction over its output's outer dimensions across threads,
  # and a reduction straight to [C] runs on one (3x slower at batch 4,
  # 129x129x304, on 2 cores).
  products = tuple(
      tap.astype(acc) * g.astype(acc)
      for _, tap in _padded_taps(x, (kh, kw), strides, rates, padding))
  rows = lax.reduce(products, tuple(jnp.zeros((), acc) for _ in products),
                    lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
  dw = jnp.stack([r.sum((0, 1)) for r in rows])
  dw = dw.reshape(kh, kw, 1, -1).astype(w.dtype)
  # Input gradient: dx[p] = sum_i gd[p + pad_before - i*rate] * w[i], where gd
  # is g dilated by the stride; pad gd so every tap is a plain slice.
  pad_cfg = [(0, 0, 0)]
  for n, k, s, r, (before, _), o in zip((h, wd), (kh, kw), strides, rates,
                                        pads, out_hw):
    eff = (k - 1) * r + 1
    dilated = (o - 1) * s + 1
    pad_cfg.append((eff - 1, max(0, before + n - dilated), s - 1))
  pad_cfg.append((0, 0, 0))
  gd = lax.pad(g, jnp.zeros((), g.dtype), pad_cfg)
  dx = None
  (rh, rw), (bh, bw) = rates, (pads[0][0], pads[1][0])
  eff_h, eff_w = (kh - 1) * rh + 1, (kw - 1) * rw + 1
  for i in range(kh):
    for j in range(kw):
      sh0 = bh + eff_h - 1 - i * rh
      sw0 = bw + eff_w - 1 - j * rw
      term = lax.slice(gd, (0, sh0, sw0, 0),
                       (gd.shape[0], sh0 + h, sw0 + wd, gd.shape[3])) * w[i, j,
                                                                           0]
      dx = term if dx is None else dx + term
  return dx.astype(x.dtype), dw


shifted_depthwise_conv.defvjp(_shifted_fwd, _shifted_bwd)


def _native_depthwise(x, w, strides, rates, padding):
  return lax.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=rates,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def shifted_forward_depthwise_conv(x: Array, w: Array,
                                   strides: tuple[int, int],
                                   rates: tuple[int, int],
                                   padding: str | tuple = 'SAME') -> Array:
  """`shifted_depthwise_conv`'s forward with the native conv's gradients.

  For backends whose own depthwise forward is slower than the shifted sum
  but whose gradient kernels are faster than the shifted sum's reductions
  (cuDNN in bfloat16). Same arguments, shapes and outputs.
  """
  return shifted_sum_autodiff(x, w, strides, rates, padding)


def _shifted_forward_bwd(strides, rates, padding, residuals, g):
  x, w = residuals
  # The conv is linear in each operand: its transposes are the gradients,
  # without tracing the forward conv again.
  dx, = jax.linear_transpose(
      lambda x: _native_depthwise(x, w, strides, rates, padding), x)(g)
  dw, = jax.linear_transpose(
      lambda w: _native_depthwise(x, w, strides, rates, padding), w)(g)
  return dx, dw


shifted_forward_depthwise_conv.defvjp(_shifted_fwd, _shifted_forward_bwd)


# Set by `native_ops()`: trace with XLA's own convolutions everywhere, for
# exported files that run on other runtimes (TFLite, ONNX, GPUs).
_NATIVE_ONLY = threading.local()


@contextlib.contextmanager
def native_ops():
  """Within it, convolutions trace to plain `lax.conv_general_dilated` (no
  CPU rewrites: shifted depthwise sums, 1x1 dots, dense_conv)."""
  previous = getattr(_NATIVE_ONLY, 'value', False)
  _NATIVE_ONLY.value = True
  try:
    yield
  finally:
    _NATIVE_ONLY.value = previous


def native_ops_active() -> bool:
  """Inside `native_ops()`: trace plain ops, as exports need."""
  return getattr(_NATIVE_ONLY, 'value', False)


def _cpu_rewrites() -> bool:
  return jax.default_backend() == 'cpu' and not native_ops_active()


def _is_nhwc(dimension_numbers) -> bool:
  return (dimension_numbers is not None and
          tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and
          tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1) and
          tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))


def _shifted_conv_general_dilated(lhs, rhs, window_strides, padding,
                                  lhs_dilation=None, rhs_dilation=None,
                                  dimension_numbers=None,
                                  feature_group_count=1, precision=None,
                                  depthwise=None, **kwargs):
  """`lax.conv_general_dilated` that routes depthwise convs to the shifted sum.

  Anything that is not an NHWC depthwise conv without input dilation goes
  to the native op unchanged. `depthwise`: the function that computes them
  (default `shifted_depthwise_conv`).
  """
  channels = lhs.shape[-1]
  if native_ops_active():
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        **kwargs)
  if not isinstance(padding, str):  # Explicit pairs: hashable for the VJP.
    padding = tuple(tuple(int(v) for v in p) for p in padding)
  if (feature_group_count > 1 and feature_group_count == channels and
      _is_nhwc(dimension_numbers) and
      all(d == 1 for d in (lhs_dilation or (1, 1))) and
      not kwargs.get('preferred_element_type')):
    multiplier = rhs.shape[-1] // channels
    x = jnp.repeat(lhs, multiplier, axis=-1) if multiplier > 1 else lhs
    rates = tuple(rhs_dilation or (1, 1))
    return (depthwise or shifted_depthwise_conv)(
        x, rhs, tuple(window_strides), rates, padding)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def _shifted_depthwise_pays(lhs: Array) -> bool:
  """Where the shifted sum beats the native grouped conv (trace time).

  XLA:CPU: always (grouped convolutions are slow there). GPU: in float32.
  One H200, batch 16 at 513, OS 16 (2026-11-27, each alone): the train step
  took 45.2 ms against 70.7 ms native (cuDNN ran the kernel gradients of
  the three 33x33x960 backbone depthwise convs and the three 33x33x320 ASPP
  ones as grouped convs over one 33x33 image of 16*C channels, 4-6 ms
  each), inference 6.3 against 9.2 ms. bfloat16 on a GPU takes only the
  shifted forward (`_shifted_forward_pays`).
  """
  return _cpu_rewrites() or (
      not native_ops_active() and lhs.dtype == jnp.float32 and
      _on_gpu())


def _on_gpu() -> bool:
  return jax.default_backend() in ('gpu', 'cuda', 'rocm')


def _shifted_forward_pays(lhs: Array) -> bool:
  """bfloat16 on a GPU: the shifted sum forward, cuDNN's gradients.

  One H200, batch 16 at 513, OS 16, bfloat16 (2026-11-27, each alone): the
  train step took 30.6 ms against 36.4 ms with cuDNN's depthwise forward
  and gradients, and 42.2 ms with the shifted sum's gradients too (a run
  that summed its kernel gradient in bfloat16); inference 5.7 against 7.8
  ms.
  """
  return (not native_ops_active() and lhs.dtype == jnp.bfloat16 and
          _on_gpu())


def _auto_conv_general_dilated(lhs, *args, **kwargs):
  """Shifted-sum depthwise where it pays (`_shifted_depthwise_pays`,
  `_shifted_forward_pays`), the native convolution elsewhere (decided at
  trace time)."""
  if _shifted_depthwise_pays(lhs):
    return _shifted_conv_general_dilated(lhs, *args, **kwargs)
  if _shifted_forward_pays(lhs):
    return _shifted_conv_general_dilated(
        lhs, *args, depthwise=shifted_forward_depthwise_conv, **kwargs)
  return lax.conv_general_dilated(lhs, *args, **kwargs)


@jax.custom_vjp
def pointwise_dot(x: Array, kernel: Array) -> Array:
  """x @ kernel over x's last axis ([..., C_in] x [C_in, C_out]), whose
  kernel gradient is one product with the activations as its left operand.

  JAX's own transpose of this dot hands XLA:CPU the kernel gradient with the
  output gradient on the left and a transpose after it, and the product
  library then copies an operand into the other layout first: 4x129x129,
  64 -> 256 channels, the gradients took 291-293 ms that way and 92-102 ms
  this way (1024 -> 256 at 65x65: 233 against 211 ms; same values within
  7e-7 relative). The configs/voc.py train step, batch 4 at 513, 2 cores,
  alternating in one process: 4.33 -> 3.87 s (median of 6); ResNet-50's
  did not change (17.9 against 18.2 s). Same forward and input gradient as
  autodiff.

  Wide layers narrowing to fewer channels (`_output_gradient_left`) put
  the output gradient on the left instead: the product library copies its
  left operand into pixels-innermost order, and there the gradient is the
  smaller one to copy.
  """
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _pointwise_dot_fwd(x, kernel):
  return pointwise_dot(x, kernel), (x, kernel)


def _output_gradient_left(c_in: int, c_out: int) -> bool:
  """Whether a 1x1 conv's kernel gradient takes the output gradient as its
  left operand: layers of 1024 or more input channels with fewer outputs.

  YNNPACK's products copy their left operand into pixels-innermost order
  (one [C, P] copy per product). Copying the narrower output gradient made
  the ResNet-50 train step (1024/2048 -> 256/512 in its last two stages and
  the head) faster: batch 2 at 513, 2 cores, alternating in one process,
  6.57 against 6.94 s median (6.18 against 6.57 fastest). Narrower layers
  stay as they are: with every narrowing layer flipped, MobileNetV2's step
  (144 -> 24 ... 960 -> 320) was 1-5% slower in two of three runs (3.98
  against 3.93 s, 4.11 against 3.91 s), ResNet-50's 6.75 against 7.20 s.
  """
  return c_in >= 1024 and c_out < c_in


def _pointwise_dot_bwd(residuals, g):
  x, kernel = residuals
  pixels = tuple(range(x.ndim - 1))
  dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
  if _output_gradient_left(*kernel.shape):
    dkernel = lax.dot_general(g, x, ((pixels, pixels), ((), ()))).T
  else:
    dkernel = lax.dot_general(x, g, ((pixels, pixels), ((), ())))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


pointwise_dot.defvjp(_pointwise_dot_fwd, _pointwise_dot_bwd)


def _channel_dot(x: Array, kernel: Array, precision=None,
                 preferred_element_type=None) -> Array:
  """x @ kernel over x's last axis: `pointwise_dot` on CPU (where its
  kernel gradient pays), else a plain dot with the given options."""
  if (_cpu_rewrites() and precision is None and
      preferred_element_type is None):
    return pointwise_dot(x, kernel)
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                         precision=precision,
                         preferred_element_type=preferred_element_type)


def dense_conv_general_dilated(lhs, rhs, window_strides, padding,
                               lhs_dilation=None, rhs_dilation=None,
                               dimension_numbers=None, feature_group_count=1,
                               precision=None, preferred_element_type=None,
                               **kwargs):
  """`lax.conv_general_dilated` for ungrouped convs (nnx.Conv's
  `conv_general_dilated`: ConvBN's and the classifier's) that computes 1x1,
  stride-1 NHWC convs as one matrix product on XLA:CPU, and other dense
  NHWC convs as `dense_conv`.

  Same values; the point is the backward pass: XLA:CPU turns a 1x1 conv's
  kernel gradient into a convolution whose window is the whole feature map
  (2 GFLOP/s here, half of a DeepLabV3+ train step), where the gradient of
  a dot is a plain GEMM over the pixels. The classifier (1x1, 256 -> 21 at
  4x129x129), forward and both gradients, 2 cores: 207-236 ms as XLA:CPU's
  convolution, 81-84 ms as a product. Other convs, and other backends, go
  to the native op unchanged.
  """
  if kwargs.get('out_sharding', 0) is None:  # nnx.Conv always passes it.
    del kwargs['out_sharding']
  if (_cpu_rewrites() and rhs.shape[:2] == (1, 1) and
      feature_group_count == 1 and _is_nhwc(dimension_numbers) and
      tuple(window_strides) == (1, 1) and
      all(d == 1 for d in (lhs_dilation or (1, 1))) and
      (padding in ('SAME', 'VALID') or
       all(tuple(p) == (0, 0) for p in padding)) and not kwargs):
    return _channel_dot(lhs, rhs[0, 0], precision, preferred_element_type)
  if (_cpu_rewrites() and rhs.shape[:2] != (1, 1) and
      feature_group_count == 1 and _is_nhwc(dimension_numbers) and
      all(d == 1 for d in (lhs_dilation or (1, 1))) and
      precision is None and preferred_element_type is None and not kwargs):
    if not isinstance(padding, str):
      padding = tuple(tuple(int(v) for v in p) for p in padding)
    return dense_conv(lhs, rhs, tuple(window_strides),
                      tuple(rhs_dilation or (1, 1)), padding)
  if preferred_element_type is not None:
    kwargs['preferred_element_type'] = preferred_element_type
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def _native_dense(x, w, strides, rates, padding):
  pads, _ = _padded_geometry(x.shape[1:3], w.shape[:2], strides, rates,
                             padding)
  return lax.conv_general_dilated(
      x, w, strides, pads, rhs_dilation=rates,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# A conv with at most this many (tap, input channel) pairs, the 3x3 RGB
# stems of MobileNetV2 and Xception, runs as that many broadcast
# multiply-adds in one fused pass over the output. XLA:CPU's convolution of
# 3 input channels is slow: the 3x3 stride-2 stem plus bias and ReLU6, 2
# cores, 257 -> 129x129x16 0.82 -> 0.32 ms; 513 -> 257x257x32 2.5 -> 1.5 ms;
# batch 4 at 513, 32 channels, 22 -> 18 ms. Not beyond: a 7x7 RGB stem
# (147 pairs) was 2.5x slower than XLA's, and im2col slower than both.
_BROADCAST_CONV_MAX_TERMS = 27


def _broadcast_dense(x, w, strides, rates, padding):
  """`_native_dense` as sum over taps (i, j) and input channels c of
  x_tap[..., c] * w[i, j, c, :] (for few input channels), accumulated in
  float32 at least, as XLA's convolution does for bfloat16."""
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  out = None
  for (i, j), tap in _padded_taps(x.astype(accumulate), w.shape[:2], strides,
                                  rates, padding):
    for c in range(w.shape[2]):
      term = tap[..., c:c + 1] * w[i, j, c].astype(accumulate)
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _dense_forward(x, w, strides, rates, padding):
  kh, kw, c_in, _ = w.shape
  if kh * kw * c_in <= _BROADCAST_CONV_MAX_TERMS:
    return _broadcast_dense(x, w, strides, rates, padding)
  return _native_dense(x, w, strides, rates, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dense_conv(x: Array, w: Array, strides: tuple[int, int],
               rates: tuple[int, int], padding: str | tuple = 'SAME'
               ) -> Array:
  """A dense kxk conv (NHWC, HWIO) whose kernel gradient is k*k GEMMs.

  The forward pass (but for few input channels, `_broadcast_dense`) and
  the input gradient are XLA's own convolutions; the kernel gradient,
  which XLA:CPU computes 3-12x slower than the forward
  (measured: 633 vs 53 ms for 3x3, 64 channels, 4x129x129), is one matrix
  product per tap, [pixels, C_in]^T @ [pixels, C_out] over the strided,
  dilated slice of the padded input that the tap sees (189 ms there).

  Args:
    x: [N, H, W, C_in].
    w: [kh, kw, C_in, C_out].
    strides, rates: (h, w) each.
    padding: TF 'SAME', 'VALID' or ((top, bottom), (left, right)).
  """
  return _dense_forward(x, w, strides, rates, padding)


def _dense_fwd(x, w, strides, rates, padding):
  return _dense_forward(x, w, strides, rates, padding), (x, w)


def _dense_bwd(strides, rates, padding, residuals, g):
  x, w = residuals
  kh, kw, c_in, c_out = w.shape
  _, dx_fn = jax.vjp(lambda x: _native_dense(x, w, strides, rates, padding),
                     x)
  g_rows = g.reshape(-1, c_out)
  dw = jnp.stack([
      tap.reshape(-1, c_in).T @ g_rows
      for _, tap in _padded_taps(x, (kh, kw), strides, rates, padding)
  ]).reshape(kh, kw, c_in, c_out)
  return dx_fn(g)[0], dw.astype(w.dtype)


dense_conv.defvjp(_dense_fwd, _dense_bwd)


# ------------------------------------------------------------- max pool


def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """Max pool of x ([N, H, W, C]) over `window` at `strides`, after
  padding it by `pads` ((top, bottom), (left, right)) with -inf.

  On XLA:CPU its gradient is `_max_pool_grad`: the native gradient's
  select-and-scatter becomes argmax index arrays and a scatter there (the
  ResNet stem's 3x3 stride-2 pool of 2x257x257x128, forward and backward,
  2 cores: 300-318 ms native, 123-128 ms this). Elsewhere, and inside
  `native_ops()`, it is `lax.reduce_window` with its own gradient.
  """
  window, strides = tuple(window), tuple(strides)
  pads = tuple(tuple(int(v) for v in p) for p in pads)
  if _cpu_rewrites():
    return _max_pool_cpu(x, window, strides, pads)
  return _reduce_window_max(x, window, strides, pads)


def _reduce_window_max(x, window, strides, pads):
  return lax.reduce_window(x, -jnp.inf, lax.max,
                           (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, strides, pads):
  return _reduce_window_max(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  return _reduce_window_max(x, window, strides, pads), x


def _max_pool_grad(window, strides, pads, residuals, g):
  """The gradient goes to the first maximum of each window in row-major
  order, as XLA's select-and-scatter sends it (ties included).

  Each tap's share (g where the tap holds the window's first maximum) is
  computed at the output resolution; tap (i, j) of output o lands at
  padded input position o * stride + (i, j), so the taps with the same
  (i mod stride_h, j mod stride_w) fill one interleaved plane of the
  padded input gradient, shifted by (i // stride_h, j // stride_w): plain
  pads and sums that XLA fuses, then one interleave.
  """
  # The maxima are taken again here, from the taps they are compared with:
  # XLA fuses x's producers (BatchNorm, ReLU) into both passes and
  # computed them for the backward pass in another order of operations
  # than for the forward one, so that compared with the forward pass's
  # maxima some windows had none (the ResNet stem's BatchNorm bias
  # gradient was off by 3.8 times its largest value). (An optimisation
  # barrier would not keep x in one array: XLA:CPU fuses across it.)
  x = residuals
  n, h, w, c = x.shape
  sh, sw = strides
  (top, bottom), (left, right) = pads
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
               constant_values=-jnp.inf)
  taps = _padded_taps(xp, window, strides, (1, 1), 'VALID')
  y = functools.reduce(jnp.maximum, [tap for _, tap in taps])
  oh, ow = y.shape[1:3]
  hp, wp = xp.shape[1:3]
  ph, pw = -(-hp // sh), -(-wp // sw)  # Plane size.
  zero = jnp.zeros((), g.dtype)
  planes = [[None] * sw for _ in range(sh)]
  taken = None
  for (i, j), tap in taps:
    hit = tap == y if taken is None else (tap == y) & ~taken
    taken = hit if taken is None else taken | hit
    di, dj = i // sh, j // sw
    share = jnp.pad(jnp.where(hit, g, zero),
                    ((0, 0), (di, ph - oh - di), (dj, pw - ow - dj), (0, 0)))
    a, b = i % sh, j % sw
    planes[a][b] = share if planes[a][b] is None else planes[a][b] + share
  rows = [jnp.stack([p if p is not None else jnp.zeros((n, ph, pw, c), g.dtype)
                     for p in row], axis=3) for row in planes]
  dxp = jnp.stack(rows, axis=2).reshape(n, ph * sh, pw * sw, c)
  return (dxp[:, top:top + h, left:left + w],)


_max_pool_cpu.defvjp(_max_pool_fwd, _max_pool_grad)


CONV_IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {
    'auto': _auto_conv_general_dilated,
    'shifted': _shifted_conv_general_dilated,
    # The shifted sum forward, the native conv's gradients.
    'shifted_forward': functools.partial(
        _shifted_conv_general_dilated,
        depthwise=shifted_forward_depthwise_conv),
    'native': lax.conv_general_dilated,
}


def depthwise_conv(x: Array, kernel: Array, strides: int | Sequence[int] = 1,
                   rate: int | Sequence[int] = 1,
                   impl: str = 'auto') -> Array:
  """Functional depthwise conv with TF 'SAME' padding (NHWC, HWIO kernel).

  Args:
    x: [N, H, W, C].
    kernel: [kh, kw, 1, C * multiplier].
    strides: int or (h, w).
    rate: dilation, int or (h, w).
    impl: a key of `CONV_IMPLEMENTATIONS` ('auto', 'shifted',
      'shifted_forward', 'native').

  Returns:
    [N, ceil(H / stride), ceil(W / stride), C * multiplier].
  """
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  rate = (rate, rate) if isinstance(rate, int) else tuple(rate)
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape,
                                  ('NHWC', 'HWIO', 'NHWC'))
  return CONV_IMPLEMENTATIONS[impl](
      x, kernel, strides, 'SAME', lhs_dilation=(1, 1), rhs_dilation=rate,
      dimension_numbers=dn, feature_group_count=x.shape[-1])


# ------------------------------------------------------------ resizing


@functools.lru_cache(maxsize=256)
def interpolation_taps(in_size: int, out_size: int,
                       align_corners: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bilinear resampling of one axis: output i = signal[lo[i]] * (1 -
  frac[i]) + signal[hi[i]] * frac[i].

  align_corners=True maps the corner pixel centres onto each other
  (src = dst * (in - 1) / (out - 1)); False uses half-pixel centres like
  `jax.image.resize` and TF2 (without antialiasing, as TF's resize).

  Returns:
    (lo, hi) int32 [out_size] source indices and frac float64 [out_size].
  """
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = dst * scale
  else:
    src = (dst + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0, in_size - 1)
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
  return lo, hi, src - lo


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int,
                         align_corners: bool = True) -> np.ndarray:
  """[out_size, in_size] matrix M with resized = M @ signal (one axis):
  `interpolation_taps` as a matrix (two nonzeros per row)."""
  lo, hi, frac = interpolation_taps(in_size, out_size, align_corners)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


_AXIS_EINSUMS = {1: 'oh,nhwc->nowc', 2: 'pw,nhwc->nhpc'}


def _apply_along_axis(m: np.ndarray, x: Array, axis: int) -> Array:
  """[out, in] matrix m applied to axis 1 or 2 of [N, H, W, C] x."""
  return jnp.einsum(_AXIS_EINSUMS[axis], jnp.asarray(m, x.dtype), x,
                    precision=lax.Precision.HIGHEST)


def _resize_axis_by_matrix(x: Array, axis: int, out_size: int,
                           align_corners: bool) -> Array:
  """[N, H, W, C] resampled along axis 1 or 2 by its interpolation matrix."""
  return _apply_along_axis(
      interpolation_matrix(x.shape[axis], out_size, align_corners), x, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resize_axis(x: Array, axis: int, out_size: int,
                 align_corners: bool) -> Array:
  """One axis of `resize_bilinear` as a two-tap blend of gathered slices.

  The forward pass reads two input rows per output row: a memory-bound
  loop that XLA fuses (the dense [out, in] matrix product costs `in` MACs
  per output value: 33 or 129 for DeepLab's logits, and a transpose). The
  backward pass is the matrix's transpose, a product, not the gathers'
  transpose, a scatter-add.
  """
  lo, hi, frac = interpolation_taps(x.shape[axis], out_size, align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  # The matrix's own float32 weights, so both paths weigh alike.
  w_lo = jnp.asarray((1.0 - frac).astype(np.float32), x.dtype).reshape(shape)
  w_hi = jnp.asarray(frac.astype(np.float32), x.dtype).reshape(shape)
  take = functools.partial(jnp.take, axis=axis, indices_are_sorted=True,
                           mode='clip')  # In bounds: no fill values.
  return take(x, lo) * w_lo + take(x, hi) * w_hi


def _resize_axis_fwd(x, axis, out_size, align_corners):
  return _resize_axis(x, axis, out_size, align_corners), x.shape[axis]


def _resize_axis_bwd(axis, out_size, align_corners, in_size, g):
  matrix = interpolation_matrix(in_size, out_size, align_corners)
  return (_apply_along_axis(matrix.T, g, axis),)


_resize_axis.defvjp(_resize_axis_fwd, _resize_axis_bwd)


def resize_bilinear(x: Array, size: Sequence[int],
                    align_corners: bool = True) -> Array:
  """Bilinear resize of [N, H, W, C] to [N, size[0], size[1], C].

  Exact and differentiable: each axis is a two-tap blend of gathered rows
  (`_resize_axis`), or, inside `native_ops()` (exports), the same
  resampling as a product with its interpolation matrix, which converters
  lower to plain matrix products.
  """
  out_h, out_w = int(size[0]), int(size[1])
  resize_axis = (_resize_axis_by_matrix if native_ops_active()
                 else _resize_axis)
  for axis, out_size in ((1, out_h), (2, out_w)):
    if x.shape[axis] != out_size:
      x = resize_axis(x, axis, out_size, align_corners)
  return x


def scale_dimension(dim: int, scale: float) -> int:
  """The reference's size rule: int((dim - 1) * scale + 1)."""
  return int((float(dim) - 1.0) * scale + 1.0)


# ------------------------------------------------------------- modules

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
  step quadratic in its length: 2.3 of the 4.5 s that tracing the tiny test
  model's train step took (measured with this class: see the commit).
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
      y = _channel_dot(part, kernel[0, 0, start:start + channels],
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
