"""TF 'SAME' and the reference's fixed padding, and the per-tap slices of
a padded input that the shifted-sum convolutions and pools are built from
(NHWC)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def tf_same_padding(size: int, kernel: int, stride: int,
                    rate: int = 1) -> tuple[int, int]:
  """(before, after) padding of TF 'SAME' for one spatial axis."""
  effective = (kernel - 1) * rate + 1
  out = -(-size // stride)
  total = max((out - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


def tap_slice(x: Array, i: int, j: int, out_hw: tuple[int, int],
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


def padded_geometry(hw, kernel_hw, strides, rates, padding='SAME'):
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


def padded_taps(x: Array, kernel_hw: tuple[int, int],
                strides: tuple[int, int], rates: tuple[int, int],
                padding: str | tuple = 'SAME'
                ) -> list[tuple[tuple[int, int], Array]]:
  """((i, j), the [N, H', W', C] slice of the zero-padded x that kernel
  tap (i, j) meets at every output position) for each tap, row by row: a
  kh x kw conv is sum over taps of slice (x) w[i, j]."""
  kh, kw = kernel_hw
  pads, out_hw = padded_geometry(x.shape[1:3], (kh, kw), strides, rates,
                                  padding)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return [((i, j), tap_slice(xp, i, j, out_hw, strides, rates))
          for i in range(kh) for j in range(kw)]
