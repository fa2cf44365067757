"""The layers: ConvBN against the native conv, the reference's fixed
padding, BatchNorm against flax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from deeplab_jax.models import layers
from deeplab_jax.ops import padding


@pytest.mark.parametrize('kernel,stride', [(1, 1), (1, 2), (3, 1)])
def test_convbn_matches_native_conv_forward_and_gradients(kernel, stride):
  """ConvBN's conv (1x1 stride 1: one matrix product on CPU; anything else:
  the native op) against lax.conv_general_dilated."""
  layer = layers.ConvBN(6, 5, kernel, strides=stride, rngs=nnx.Rngs(0))
  kx, kg = jax.random.split(jax.random.PRNGKey(kernel * 10 + stride))
  x = jax.random.normal(kx, (2, 13, 10, 6))
  w = layer.conv.kernel[...]

  def native(x, w):
    return lax.conv_general_dilated(
        x, w, (stride, stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  graphdef, state = nnx.split(layer.conv)

  def ours(x, w):
    conv = nnx.merge(graphdef, state, copy=True)  # Fresh in every trace.
    conv.kernel[...] = w
    return conv(x)

  expected = native(x, w)
  np.testing.assert_allclose(ours(x, w), expected, atol=1e-5)
  cotangent = jax.random.normal(kg, expected.shape)
  grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * cotangent),
                    (0, 1))(x, w) for f in (ours, native)]
  np.testing.assert_allclose(grads[0][0], grads[1][0], atol=1e-5)
  np.testing.assert_allclose(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-5)
  # The point of the matrix product: no convolution in the program.
  program = jax.jit(ours).lower(x, w).as_text()
  assert ('convolution' in program) == ((kernel, stride) != (1, 1))


@pytest.mark.parametrize('size', [(8, 8), (9, 7)])
@pytest.mark.parametrize('rate', [1, 2])
@pytest.mark.parametrize('groups', [1, 4])
def test_explicit_padding_is_the_reference_fixed_padding(size, rate, groups):
  # conv2d_same / separable_conv2d_same: pad (k_eff - 1) // 2 before and the
  # rest after, whatever the input size, then a VALID conv; the shifted
  # depthwise path must give the native conv's values and gradients.
  conv = layers.ConvBN(4, 4, 3, strides=2, rate=rate, groups=groups,
                       activation=None, explicit_padding=True,
                       options=layers.LayerOptions(depthwise_impl='shifted'),
                       rngs=nnx.Rngs(0))
  kernel = conv.conv.kernel[...]
  x = jax.random.normal(jax.random.key(1), (2, *size, 4))
  pad = padding.fixed_padding(3, rate)
  assert pad == (rate, rate)
  def reference(x, kernel):
    padded = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    return lax.conv_general_dilated(
        padded, kernel, (2, 2), 'VALID', rhs_dilation=(rate, rate),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
        precision=lax.Precision.HIGHEST)
  def ours(x, kernel):
    return conv.conv.conv_general_dilated(
        x, kernel, (2, 2), conv.conv.padding, lhs_dilation=(1, 1),
        rhs_dilation=(rate, rate),
        dimension_numbers=lax.conv_dimension_numbers(
            x.shape, kernel.shape, ('NHWC', 'HWIO', 'NHWC')),
        feature_group_count=groups, precision=lax.Precision.HIGHEST)
  want, got = reference(x, kernel), ours(x, kernel)
  assert got.shape == want.shape == (2, -(-size[0] // 2), -(-size[1] // 2), 4)
  np.testing.assert_allclose(got, want, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * cotangent), (0, 1))(
      x, kernel) for f in (reference, ours)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(b, a, atol=1e-4)
  # And the module's own forward uses it (TF 'SAME' would differ on 8x8).
  y = nnx.view(conv, use_running_average=True)(x)
  np.testing.assert_allclose(y * np.sqrt(1 + conv.bn.epsilon), want,
                             atol=1e-4)


@pytest.mark.parametrize('dtype', [None, jnp.bfloat16])
def test_batch_norm_equals_flax_batch_norm_in_both_modes(dtype):
  """layers.BatchNorm only writes its moving statistics differently (to
  keep tracing linear): outputs, updated statistics and gradients equal
  nnx.BatchNorm's bit for bit, under jit, in training and inference."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6, 3)) * 3 + 1
  def make(cls):
    bn = cls(3, momentum=0.9, epsilon=1e-3, dtype=dtype, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.array([0.5, 1.0, 2.0])
    bn.bias[...] = jnp.array([0.1, -0.2, 0.3])
    return bn

  @nnx.jit(static_argnums=2)
  def run(bn, x, training):
    def loss(bn, x):
      y = bn(x, use_running_average=not training)
      return jnp.sum(y.astype(jnp.float32) ** 2), y
    (_, y), grads = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        bn, x)
    return y, grads

  for training in (True, False):
    ours, theirs = make(layers.BatchNorm), make(nnx.BatchNorm)
    y_ours, g_ours = run(ours, x, training)
    y_theirs, g_theirs = run(theirs, x, training)
    np.testing.assert_array_equal(y_ours, y_theirs)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
      np.testing.assert_array_equal(a, b)
    for name in ('mean', 'var'):
      np.testing.assert_array_equal(getattr(ours, name)[...],
                                    getattr(theirs, name)[...])
    moved = not np.array_equal(ours.mean[...], np.zeros(3))
    assert moved == training
