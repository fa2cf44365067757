"""Align-corners bilinear resizing against numpy, its gradient, and the
matrix form exports trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.ops import resize
from deeplab_jax.ops.dispatch import native_ops

def _numpy_align_corners(x, out_h, out_w):
  """Independent loop implementation of TF1 resize_bilinear(align_corners)."""
  n, h, w, c = x.shape
  y = np.zeros((n, out_h, out_w, c))
  for i in range(out_h):
    sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
    for j in range(out_w):
      sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
      top = x[:, y0, x0] * (1 - fx) + x[:, y0, x1] * fx
      bottom = x[:, y1, x0] * (1 - fx) + x[:, y1, x1] * fx
      y[:, i, j] = top * (1 - fy) + bottom * fy
  return y


@pytest.mark.parametrize('in_hw,out_hw', [((5, 4), (17, 13)), ((33, 33),
                                                               (257, 257)),
                                          ((9, 7), (3, 5)), ((1, 1), (4, 6))])
def test_resize_bilinear_align_corners_matches_numpy(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = resize.resize_bilinear(jnp.asarray(x), out_hw)
  np.testing.assert_allclose(got, _numpy_align_corners(x, *out_hw),
                             atol=1e-5)
  # Corners map onto corners exactly.
  np.testing.assert_allclose(got[:, 0, 0], x[:, 0, 0], atol=1e-6)
  np.testing.assert_allclose(got[:, -1, -1], x[:, -1, -1], atol=1e-6)


@pytest.mark.parametrize('in_hw,out_hw', [((5, 4), (17, 13)),
                                          ((9, 7), (3, 5)), ((1, 1), (4, 6))])
def test_resize_bilinear_gradient_is_the_adjoint_of_numpy(in_hw, out_hw):
  """The gathers' custom VJP (a matrix product, not a scatter): for the
  linear map R, <R x, g> = <x, R^T g> with R the NumPy loop above."""
  rng = np.random.default_rng(1)
  g = rng.normal(size=(2, *out_hw, 3))
  dx = jax.grad(lambda x: jnp.sum(resize.resize_bilinear(x, out_hw) * g))(
      jnp.zeros((2, *in_hw, 3), jnp.float32))
  for _ in range(2):
    x = rng.normal(size=(2, *in_hw, 3))
    np.testing.assert_allclose(
        np.sum(_numpy_align_corners(x, *out_hw) * g),
        np.sum(x * np.asarray(dx, np.float64)), rtol=1e-5)


def test_resize_bilinear_in_exports_is_the_matrix_product():
  """Inside `native_ops()` (exports) the same resize traces to matrix
  products, no gathers, and gives the same values."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 33, 33, 21)),
                  jnp.float32)
  fast = jax.jit(lambda x: resize.resize_bilinear(x, (257, 257)))
  fast_text, fast_out = fast.lower(x).as_text(), fast(x)
  with native_ops():
    plain = jax.jit(lambda x: resize.resize_bilinear(x, (257, 257)))
    plain_text, plain_out = plain.lower(x).as_text(), plain(x)
  np.testing.assert_allclose(fast_out, plain_out, atol=1e-5)
  assert 'gather' in fast_text and 'dot_general' not in fast_text
  assert 'gather' not in plain_text and 'dot_general' in plain_text


def test_align_corners_differs_from_jax_image_resize_half_pixel():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  ours = resize.resize_bilinear(x, (7, 7))
  half_pixel = jax.image.resize(x, (1, 7, 7, 1), 'bilinear')
  # Along a row of 0, 1, 2, 3 resized to 7: align corners samples at
  # j * 3/6 (output 1 -> 0.5); half-pixel at (j + 0.5) * 4/7 - 0.5 (-> 0.357).
  assert float(ours[0, 0, 1, 0]) == pytest.approx(0.5)
  assert float(half_pixel[0, 0, 1, 0]) == pytest.approx(1.5 * 4 / 7 - 0.5)
  assert float(jnp.abs(ours - half_pixel).max()) > 0.1
  # Our half-pixel mode does match jax.image.resize (upsampling).
  np.testing.assert_allclose(
      resize.resize_bilinear(x, (7, 7), align_corners=False), half_pixel,
      atol=1e-5)


def test_scale_dimension_matches_reference_rule():
  assert resize.scale_dimension(513, 1 / 16) == 33
  assert resize.scale_dimension(513, 1 / 4) == 129
  assert resize.scale_dimension(513, 0.5) == 257


def test_inside_tflite_ops_each_resize_is_one_primitive_with_numpys_values():
  from deeplab_jax.ops import pooling, tflite_ops  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(1).normal(size=(2, 5, 7, 3)).astype(np.float32)

  def fn(x):
    pooled = pooling.global_average_pool(x)
    return (resize.resize_bilinear(x, (9, 13)),
            resize.resize_bilinear(x, (5, 7)),  # An identity, kept.
            resize.resize_bilinear(pooled, (5, 7)))

  with tflite_ops():
    jaxpr = jax.make_jaxpr(fn)(x).jaxpr
    got = jax.jit(fn)(x)
  primitives = [eqn.primitive.name for eqn in jaxpr.eqns]
  assert primitives.count('resize_bilinear') == 3
  assert 'reduce_window' in primitives and 'reduce_sum' not in primitives
  want = _numpy_align_corners(x, 9, 13)
  np.testing.assert_allclose(got[0], want, atol=1e-5)
  np.testing.assert_array_equal(got[1], x)
  np.testing.assert_allclose(
      got[2], np.broadcast_to(x.mean((1, 2), keepdims=True), x.shape),
      atol=1e-6)
