"""Max pooling whose XLA:CPU gradient is pads and sums, not a
select-and-scatter (the ResNet stem's pool); global average pooling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from deeplab_jax.ops.dispatch import cpu_rewrites, tflite_ops_active
from deeplab_jax.ops.padding import padded_taps

Array = jax.Array


def global_average_pool(x: Array) -> Array:
  """[N, H, W, C] -> [N, 1, 1, C] mean over H and W (image pooling).

  Inside `tflite_ops()` a window sum over the whole map divided by its
  size, which TFLite's converter lowers to AVERAGE_POOL_2D (a mean
  becomes SUM and MUL there).
  """
  if tflite_ops_active():
    window = (1, x.shape[1], x.shape[2], 1)
    total = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, window,
                              (1, 1, 1, 1), 'VALID')
    return total / (x.shape[1] * x.shape[2])
  return jnp.mean(x, axis=(1, 2), keepdims=True)


def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """Max pool of x ([N, H, W, C]) over `window` at `strides`, after
  padding it by `pads` ((top, bottom), (left, right)) with -inf.

  On XLA:CPU its gradient is `_max_pool_grad`: the native gradient's
  select-and-scatter becomes argmax index arrays and a scatter there (2.4x
  slower for the ResNet stem's pool). Elsewhere, and inside `native_ops()`,
  it is `lax.reduce_window` with its own gradient.
  """
  window, strides = tuple(window), tuple(strides)
  pads = tuple(tuple(int(v) for v in p) for p in pads)
  if cpu_rewrites():
    return _max_pool_cpu(x, window, strides, pads)
  return reduce_window_max(x, window, strides, pads)


def reduce_window_max(x, window, strides, pads):
  return lax.reduce_window(x, -jnp.inf, lax.max,
                           (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, strides, pads):
  return reduce_window_max(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  return reduce_window_max(x, window, strides, pads), x


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
  taps = padded_taps(xp, window, strides, (1, 1), 'VALID')
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
