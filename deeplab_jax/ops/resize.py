"""Bilinear resizing with align-corners semantics (TF1
`resize_bilinear(align_corners=True)`, which the reference uses everywhere;
`jax.image.resize` uses half-pixel centres). Each axis is a two-tap blend
of gathered rows whose gradient is the interpolation matrix's transpose;
inside `native_ops()` the resize is a product with that matrix, which
converters lower to plain matrix products."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax.extend import core as jex_core
from jax.interpreters import mlir

from deeplab_jax.ops.dispatch import native_ops_active, tflite_ops_active

Array = jax.Array


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


def _resize_by_matrices(x: Array, *, size: tuple[int, int],
                        align_corners: bool) -> Array:
  for axis, out_size in ((1, size[0]), (2, size[1])):
    if x.shape[axis] != out_size:
      x = _resize_axis_by_matrix(x, axis, out_size, align_corners)
  return x


# One op per resize, for exporters that have their own (TFLite's
# RESIZE_BILINEAR): XLA runs it as the matrix products above.
resize_bilinear_p = jex_core.Primitive('resize_bilinear')
resize_bilinear_p.def_impl(_resize_by_matrices)
resize_bilinear_p.def_abstract_eval(
    lambda x, *, size, align_corners: jax.core.ShapedArray(
        (x.shape[0], *size, x.shape[3]), x.dtype))
mlir.register_lowering(
    resize_bilinear_p,
    mlir.lower_fun(_resize_by_matrices, multiple_results=False))


def resize_bilinear(x: Array, size: Sequence[int],
                    align_corners: bool = True) -> Array:
  """Bilinear resize of [N, H, W, C] to [N, size[0], size[1], C].

  Exact and differentiable: each axis is a two-tap blend of gathered rows
  (`_resize_axis`), or, inside `native_ops()` (exports), the same
  resampling as a product with its interpolation matrix, which converters
  lower to plain matrix products.
  """
  out_h, out_w = int(size[0]), int(size[1])
  if tflite_ops_active():
    return resize_bilinear_p.bind(x, size=(out_h, out_w),
                                  align_corners=bool(align_corners))
  resize_axis = (_resize_axis_by_matrix if native_ops_active()
                 else _resize_axis)
  for axis, out_size in ((1, out_h), (2, out_w)):
    if x.shape[axis] != out_size:
      x = resize_axis(x, axis, out_size, align_corners)
  return x


def scale_dimension(dim: int, scale: float) -> int:
  """The reference's size rule: int((dim - 1) * scale + 1)."""
  return int((float(dim) - 1.0) * scale + 1.0)
