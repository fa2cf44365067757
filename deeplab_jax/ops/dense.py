"""Dense convolutions and 1x1 products (NHWC, HWIO kernels) whose
backward passes XLA:CPU computes slowly.

* `pointwise_dot`: a 1x1 conv as one matrix product whose kernel gradient
  is a GEMM over the pixels (XLA:CPU makes it a whole-map convolution).
* `dense_conv`: a kxk conv whose kernel gradient is one GEMM per tap; its
  3x3 RGB stems run as broadcast multiply-adds.
* `dense_conv_general_dilated`: nnx.Conv's `conv_general_dilated` that
  routes to the two on XLA:CPU, and to the native op elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from deeplab_jax.ops.dispatch import cpu_rewrites, is_nhwc
from deeplab_jax.ops.padding import padded_geometry, padded_taps

Array = jax.Array


@jax.custom_vjp
def pointwise_dot(x: Array, kernel: Array) -> Array:
  """x @ kernel over x's last axis ([..., C_in] x [C_in, C_out]), whose
  kernel gradient is one product with the activations as its left operand.

  JAX's own transpose of this dot hands XLA:CPU the kernel gradient with the
  output gradient on the left and a transpose after it, and the product
  library then copies an operand into the other layout first (the
  configs/voc.py train step of 4 on 2 cores: 4.33 -> 3.87 s). Same forward
  and input gradient as autodiff.

  Wide layers narrowing to fewer channels (`output_gradient_left`) put
  the output gradient on the left instead: the product library copies its
  left operand into pixels-innermost order, and there the gradient is the
  smaller one to copy.
  """
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _pointwise_dot_fwd(x, kernel):
  return pointwise_dot(x, kernel), (x, kernel)


def output_gradient_left(c_in: int, c_out: int) -> bool:
  """Whether a 1x1 conv's kernel gradient takes the output gradient as its
  left operand: layers of 1024 or more input channels with fewer outputs.

  YNNPACK's products copy their left operand into pixels-innermost order,
  so the narrower of the two is the cheaper left operand: ResNet-50's
  wide last stages gained 5% a step; flipping narrower layers too made
  MobileNetV2's step slower (benchmarks/README.md).
  """
  return c_in >= 1024 and c_out < c_in


def _pointwise_dot_bwd(residuals, g):
  x, kernel = residuals
  pixels = tuple(range(x.ndim - 1))
  dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
  if output_gradient_left(*kernel.shape):
    dkernel = lax.dot_general(g, x, ((pixels, pixels), ((), ()))).T
  else:
    dkernel = lax.dot_general(x, g, ((pixels, pixels), ((), ())))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


pointwise_dot.defvjp(_pointwise_dot_fwd, _pointwise_dot_bwd)


def channel_dot(x: Array, kernel: Array, precision=None,
                preferred_element_type=None) -> Array:
  """x @ kernel over x's last axis: `pointwise_dot` on CPU (where its
  kernel gradient pays), else a plain dot with the given options."""
  if (cpu_rewrites() and precision is None and
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
  (2 GFLOP/s, half of a DeepLabV3+ train step), where the gradient of a
  dot is a plain GEMM over the pixels. Other convs, and other backends, go
  to the native op unchanged.
  """
  if kwargs.get('out_sharding', 0) is None:  # nnx.Conv always passes it.
    del kwargs['out_sharding']
  if (cpu_rewrites() and rhs.shape[:2] == (1, 1) and
      feature_group_count == 1 and is_nhwc(dimension_numbers) and
      tuple(window_strides) == (1, 1) and
      all(d == 1 for d in (lhs_dilation or (1, 1))) and
      (padding in ('SAME', 'VALID') or
       all(tuple(p) == (0, 0) for p in padding)) and not kwargs):
    return channel_dot(lhs, rhs[0, 0], precision, preferred_element_type)
  if (cpu_rewrites() and rhs.shape[:2] != (1, 1) and
      feature_group_count == 1 and is_nhwc(dimension_numbers) and
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
  pads, _ = padded_geometry(x.shape[1:3], w.shape[:2], strides, rates,
                             padding)
  return lax.conv_general_dilated(
      x, w, strides, pads, rhs_dilation=rates,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# A conv with at most this many (tap, input channel) pairs, the 3x3 RGB
# stems of MobileNetV2 and Xception, runs as that many broadcast
# multiply-adds in one fused pass over the output: XLA:CPU's convolution of
# 3 input channels is slow (the 257 -> 129x129x16 stem: 0.82 -> 0.32 ms).
# A 7x7 RGB stem (147 pairs) is faster as XLA's own.
_BROADCAST_CONV_MAX_TERMS = 27


def _broadcast_dense(x, w, strides, rates, padding):
  """`_native_dense` as sum over taps (i, j) and input channels c of
  x_tap[..., c] * w[i, j, c, :] (for few input channels), accumulated in
  float32 at least, as XLA's convolution does for bfloat16."""
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  out = None
  for (i, j), tap in padded_taps(x.astype(accumulate), w.shape[:2], strides,
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
  which XLA:CPU computes 3-12x slower than the forward, is one matrix
  product per tap, [pixels, C_in]^T @ [pixels, C_out] over the strided,
  dilated slice of the padded input that the tap sees.

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
      for _, tap in padded_taps(x, (kh, kw), strides, rates, padding)
  ]).reshape(kh, kw, c_in, c_out)
  return dx_fn(g)[0], dw.astype(w.dtype)


dense_conv.defvjp(_dense_fwd, _dense_bwd)
