"""Max pooling: the gradient goes to the first maximum of each window,
as numpy says and XLA sends it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from deeplab_jax.models.layers import ConvBN
from deeplab_jax.ops import pooling
from deeplab_jax.ops.dispatch import native_ops

def _numpy_max_pool_and_grad(x, g, window, strides, pads):
  """Max pool and its gradient in NumPy loops: the gradient of each output
  goes to the first maximum of its window in row-major order (padding
  counts as -inf), as XLA's select-and-scatter sends it."""
  (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, pads
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
              constant_values=-np.inf)
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw) // sw + 1
  y = np.empty((x.shape[0], oh, ow, x.shape[3]), x.dtype)
  dxp = np.zeros(xp.shape, np.float64)
  for n in range(x.shape[0]):
    for a in range(oh):
      for b in range(ow):
        for c in range(x.shape[3]):
          win = xp[n, a * sh:a * sh + kh, b * sw:b * sw + kw, c]
          first = np.argmax(win)  # Row-major, first of ties.
          y[n, a, b, c] = win.flat[first]
          i, j = divmod(first, kw)
          dxp[n, a * sh + i, b * sw + j, c] += g[n, a, b, c]
  return y, dxp[:, top:top + x.shape[1], left:left + x.shape[2]]


@pytest.mark.parametrize('window,strides,pads,hw', [
    ((3, 3), (2, 2), ((0, 1), (0, 1)), (8, 8)),  # TF 'SAME', even input.
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (9, 7)),  # Keras's ZeroPadding2D(1).
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (6, 8)),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (5, 6)),
    ((3, 2), (2, 3), ((1, 0), (0, 2)), (7, 9))])
def test_max_pool_gradient_goes_to_the_first_maximum_as_numpys(
    window, strides, pads, hw):
  # Half the inputs are ReLU zeros and the rest small integers: most
  # windows hold ties, where the gradient must go to the first maximum.
  rng = np.random.default_rng(0)
  x = np.maximum(rng.integers(-3, 3, (2, *hw, 3)), 0).astype(np.float32)
  pool = lambda x: pooling.max_pool(x, window, strides, pads)
  y, vjp = jax.vjp(pool, jnp.asarray(x))
  g = rng.standard_normal(y.shape).astype(np.float32)
  want_y, want_dx = _numpy_max_pool_and_grad(x, g, window, strides, pads)
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], want_dx, atol=1e-6)
  # It is lax.reduce_window's: forward and gradient.
  native = lambda x: lax.reduce_window(
      x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
      ((0, 0), *pads, (0, 0)))
  _, native_vjp = jax.vjp(native, jnp.asarray(x))
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0],
                             native_vjp(jnp.asarray(g))[0], atol=1e-6)
  # On CPU the gradient is pads and sums, no select-and-scatter; exports
  # (native_ops) keep the native op and its gradient.
  def gradient_jaxpr():  # A new function each time: no cached trace.
    return str(jax.make_jaxpr(
        lambda x: jax.vjp(pool, x)[1](jnp.ones(y.shape))[0])(x))
  assert 'select_and_scatter' not in gradient_jaxpr()
  with native_ops():
    assert 'select_and_scatter' in gradient_jaxpr()


def test_max_pool_after_a_fused_batch_norm_trains_like_the_native_pool():
  # In a jitted train step XLA fuses BatchNorm and ReLU into their
  # consumers and may recompute them in the backward pass in another order
  # of operations: a gradient that compared those values with the forward
  # pass's maxima found no maximum in some windows (the gradients here
  # were off by up to 2.0, against a largest of 35).
  x = np.random.default_rng(0).standard_normal((2, 33, 33, 3), np.float32)
  conv = ConvBN(3, 8, 3, strides=2, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(conv, nnx.Param, ...)
  def gradients(pool):
    def loss(params):
      features = nnx.merge(graphdef, params, rest, copy=True)(x)
      return jnp.sum(jnp.sin(pool(features, (3, 3), (2, 2),
                                  ((1, 1), (1, 1)))))
    # Compiled as outside the tests (conftest's XLA_FLAGS compile fast).
    return jax.tree.leaves(jax.jit(jax.grad(loss), compiler_options={
        'xla_backend_optimization_level': 3,
        'xla_cpu_use_fusion_emitters': True})(params))
  want = gradients(pooling.reduce_window_max)
  for got, expected in zip(gradients(pooling.max_pool), want, strict=True):
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
