"""Dense convolutions and 1x1 products: values and gradients against
numpy and the native convolution."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from deeplab_jax.models.layers import ConvBN
from deeplab_jax.ops import dense

@pytest.mark.parametrize('c_in,c_out', [(4, 12), (12, 4), (1024, 8)])
def test_pointwise_dot_gradients_are_numpys_with_the_activations_on_the_left(
    c_in, c_out):
  """1x1 convs on CPU: the product and both gradients against NumPy in
  float64; the kernel gradient is one product with x on the left and no
  transpose after it (JAX's own transpose of the dot has one), except for
  wide layers narrowing to fewer channels (1024 -> 8 here), whose product
  takes the output gradient on the left; bfloat16 inputs keep their dtype
  in both gradients."""
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (2, 5, 3, c_in))
  w = jax.random.normal(kw, (c_in, c_out))
  g = jax.random.normal(kg, (2, 5, 3, c_out))
  y, vjp = jax.vjp(dense.pointwise_dot, x, w)
  dx, dw = vjp(g)
  x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
  # float32 sums of c_in products of O(1) terms: error ~ sqrt(c_in) ulps.
  np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5,
                             atol=1e-5 * np.sqrt(c_in))
  np.testing.assert_allclose(dx, g64 @ w64.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      dw, x64.reshape(-1, c_in).T @ g64.reshape(-1, c_out), rtol=1e-5,
      atol=1e-4)
  def kernel_gradient(f):
    return str(jax.make_jaxpr(lambda x, w: jax.vjp(f, x, w)[1](g)[1])(x, w))
  plain = lambda x, w: lax.dot_general(x, w, (((3,), (0,)), ((), ())))
  assert 'transpose' in kernel_gradient(plain)
  ours = kernel_gradient(dense.pointwise_dot)
  # The kernel gradient's product: [c_in, c_out] with x on the left,
  # [c_out, c_in] (then transposed) with the output gradient there.
  products = re.findall(r'f32\[(\d+),(\d+)\] = dot_general', ours)
  gradient_left = c_in >= 1024 and c_out < c_in
  expected = (c_out, c_in) if gradient_left else (c_in, c_out)
  assert products == [tuple(str(n) for n in expected)]
  assert ('transpose' in ours) == gradient_left
  x16, w16, g16 = (a.astype(jnp.bfloat16) for a in (x, w, g))
  dx16, dw16 = jax.vjp(dense.pointwise_dot, x16, w16)[1](g16)
  assert dx16.dtype == dw16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dw16, np.float32), dw, rtol=0.05,
                             atol=0.1)


def test_rgb_stem_in_bfloat16_accumulates_in_float32():
  """The broadcast stem sums 27 products in float32 and rounds once, as
  XLA's bfloat16 convolution does: the result is the float32 conv rounded
  to bfloat16 (within one bfloat16 step), not 27 roundings."""
  kx, kw = jax.random.split(jax.random.key(4))
  x = jax.random.uniform(kx, (2, 17, 17, 3), minval=-1, maxval=1)
  w = jax.random.normal(kw, (3, 3, 3, 16)) * 0.3
  x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  got = dense.dense_conv(x16, w16, (2, 2), (1, 1), 'SAME')
  assert got.dtype == jnp.bfloat16
  want = lax.conv_general_dilated(
      x16.astype(jnp.float32), w16.astype(jnp.float32), (2, 2), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(got, np.float32), want,
                             rtol=2 ** -8, atol=1e-6)


@pytest.mark.parametrize('kernel,stride,rate,padding,channels', [
    (3, 1, 1, 'SAME', 5), (3, 2, 1, 'SAME', 5),
    (3, 2, 2, ((2, 2), (2, 2)), 5), (7, 2, 1, ((3, 3), (3, 3)), 5),
    # RGB stems: 27 (tap, channel) pairs, broadcast multiply-adds.
    (3, 2, 1, 'SAME', 3), (3, 2, 1, ((1, 1), (1, 1)), 3),
    (3, 1, 2, 'SAME', 3), (7, 2, 1, 'SAME', 3)])
def test_dense_conv_matches_native_values_and_gradients(kernel, stride, rate,
                                                        padding, channels):
  # The kernel gradient is one GEMM per tap over the slice the tap sees.
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (2, 10, 9, channels))
  w = jax.random.normal(kw, (kernel, kernel, channels, 6))
  def native(x, w):
    return lax.conv_general_dilated(
        x, w, (stride, stride), padding if padding == 'SAME' else list(
            padding), rhs_dilation=(rate, rate),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=lax.Precision.HIGHEST)
  def ours(x, w):
    return dense.dense_conv(x, w, (stride, stride), (rate, rate), padding)
  want, got = native(x, w), ours(x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  cotangent = jax.random.normal(kg, want.shape)
  grads = [jax.vjp(f, x, w)[1](cotangent) for f in (native, ours)]
  np.testing.assert_allclose(grads[1][0], grads[0][0], atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(grads[1][1], grads[0][1], atol=2e-4, rtol=1e-5)
  # The forward pass: XLA's convolution, or for at most 27 (tap, input
  # channel) pairs none at all.
  forward = str(jax.make_jaxpr(ours)(x, w))
  broadcast = kernel * kernel * channels <= 27
  assert ('conv_general_dilated' in forward) != broadcast
  # ConvBN routes dense kxk convs there on CPU.
  jaxpr = str(jax.make_jaxpr(lambda x: ConvBN(
      channels, 6, 3, rngs=nnx.Rngs(0)).conv(x))(x))
  assert 'dense_conv' in jaxpr or 'custom_vjp_call' in jaxpr
