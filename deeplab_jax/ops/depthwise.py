"""Depthwise convolutions (NHWC, HWIO kernels [kh, kw, 1, C]).

* `shifted_depthwise_conv`: a sum of shifted slices, with its own VJP (the
  input gradient again a shifted sum, the kernel gradient one reduction per
  tap). Taken on XLA:CPU, where a `feature_group_count` convolution is
  5-30x slower, and on GPUs in float32.
* `shifted_forward_depthwise_conv`: the shifted forward with the native
  conv's gradients: GPUs in bfloat16, where cuDNN's gradients win.
* the native grouped convolution elsewhere and inside `native_ops()`.

`CONV_IMPLEMENTATIONS` maps `config.model.depthwise_impl` to these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from deeplab_jax.ops.dispatch import (cpu_rewrites, is_nhwc, native_ops_active,
                                      on_gpu)
from deeplab_jax.ops.padding import padded_geometry, padded_taps

Array = jax.Array


def shifted_sum_autodiff(x, w, strides, rates, padding='SAME'):
  """The shifted-sum depthwise conv without the custom VJP (JAX autodiff
  differentiates it): what `shifted_depthwise_conv` computes, for
  benchmarks/depthwise.py's comparison of the two backward passes."""
  out = None
  for (i, j), tap in padded_taps(x, w.shape[:2], strides, rates, padding):
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
  pads, out_hw = padded_geometry((h, wd), (kh, kw), strides, rates, padding)
  # Products accumulate in float32 at least: a bfloat16 sum of a row of 257
  # products keeps 8 bits of the kernel gradient.
  acc = jnp.promote_types(g.dtype, jnp.float32)
  # Kernel gradient: sum over N, H, W of (tap slice * g) for every tap, as
  # one variadic reduction so that XLA makes a single pass over x and g. It
  # reduces over W only, to [N, H, C] per tap, then sums those small rows:
  # XLA:CPU splits a reduction across threads over its output's outer
  # dimensions, and one straight to [C] runs on one thread (3x slower).
  products = tuple(
      tap.astype(acc) * g.astype(acc)
      for _, tap in padded_taps(x, (kh, kw), strides, rates, padding))
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


def native_depthwise(x, w, strides, rates, padding):
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
      lambda x: native_depthwise(x, w, strides, rates, padding), x)(g)
  dw, = jax.linear_transpose(
      lambda w: native_depthwise(x, w, strides, rates, padding), w)(g)
  return dx, dw


shifted_forward_depthwise_conv.defvjp(_shifted_fwd, _shifted_forward_bwd)


def shifted_conv_general_dilated(lhs, rhs, window_strides, padding,
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
      is_nhwc(dimension_numbers) and
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


def shifted_depthwise_pays(lhs: Array) -> bool:
  """Where the shifted sum beats the native grouped conv (trace time).

  XLA:CPU: always (grouped convolutions are slow there). GPUs in float32:
  cuDNN runs the 33x33 depthwise kernel gradients as grouped convs over
  one image of batch x C channels (an H200's train step of 16 at 513: 45
  against 71 ms). bfloat16 on a GPU takes only the shifted forward
  (`shifted_forward_pays`).
  """
  return cpu_rewrites() or (
      not native_ops_active() and lhs.dtype == jnp.float32 and
      on_gpu())


def shifted_forward_pays(lhs: Array) -> bool:
  """bfloat16 on a GPU: the shifted sum forward, cuDNN's gradients.

  There cuDNN's depthwise forward is the slower part and its gradients the
  faster (an H200's train step of 16 at 513: 30.6 against 36.4 ms).
  """
  return (not native_ops_active() and lhs.dtype == jnp.bfloat16 and
          on_gpu())


def auto_conv_general_dilated(lhs, *args, **kwargs):
  """Shifted-sum depthwise where it pays (`shifted_depthwise_pays`,
  `shifted_forward_pays`), the native convolution elsewhere (decided at
  trace time)."""
  if shifted_depthwise_pays(lhs):
    return shifted_conv_general_dilated(lhs, *args, **kwargs)
  if shifted_forward_pays(lhs):
    return shifted_conv_general_dilated(
        lhs, *args, depthwise=shifted_forward_depthwise_conv, **kwargs)
  return lax.conv_general_dilated(lhs, *args, **kwargs)


CONV_IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {
    'auto': auto_conv_general_dilated,
    'shifted': shifted_conv_general_dilated,
    # The shifted sum forward, the native conv's gradients.
    'shifted_forward': functools.partial(
        shifted_conv_general_dilated,
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
