"""Depthwise convolutions: the shifted sum against the native grouped
conv, forward and gradients, and which one each backend traces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.ops import dispatch, depthwise
from deeplab_jax.ops.dispatch import native_ops

def _conv_pair(stride, rate, multiplier=1, size=(13, 10), channels=6):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(stride * 10 + rate), 3)
  x = jax.random.normal(kx, (2, *size, channels))
  w = jax.random.normal(kw, (3, 3, 1, channels * multiplier))
  def f(impl):
    return lambda x, w: depthwise.depthwise_conv(x, w, stride, rate, impl)
  return x, w, f, kg


@pytest.mark.parametrize('rate', [1, 2, 4])
@pytest.mark.parametrize('stride', [1, 2])
def test_shifted_depthwise_matches_native_forward_and_gradients(stride, rate):
  x, w, f, kg = _conv_pair(stride, rate)
  fast, native = f('shifted')(x, w), f('native')(x, w)
  assert fast.shape == native.shape == (2, -(-13 // stride), -(-10 // stride),
                                        6)
  np.testing.assert_allclose(fast, native, atol=1e-5)
  cotangent = jax.random.normal(kg, native.shape)
  def loss(impl):
    return lambda x, w: jnp.sum(f(impl)(x, w) * cotangent)
  gx_fast, gw_fast = jax.jit(jax.grad(loss('shifted'), (0, 1)))(x, w)
  gx_nat, gw_nat = jax.jit(jax.grad(loss('native'), (0, 1)))(x, w)
  # Kernel gradients sum ~2x13x10 products of O(1) terms.
  np.testing.assert_allclose(gx_fast, gx_nat, atol=1e-5)
  np.testing.assert_allclose(gw_fast, gw_nat, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('impl', ['shifted', 'shifted_forward'])
def test_shifted_depthwise_with_channel_multiplier_and_anisotropic_rate(impl):
  x, w, f, kg = _conv_pair(1, 1, multiplier=2)
  def conv(impl):
    return lambda x, w: depthwise.depthwise_conv(x, w, 1, (1, 3), impl)
  fast, native = conv(impl)(x, w), conv('native')(x, w)
  np.testing.assert_allclose(fast, native, atol=1e-5)
  cotangent = jax.random.normal(kg, native.shape)
  def grads(impl):
    return jax.grad(lambda x, w: jnp.sum(conv(impl)(x, w) * cotangent),
                    (0, 1))(x, w)
  for got, want in zip(grads(impl), grads('native')):
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fast_path_is_really_used_and_native_is_not():
  x, w, f, _ = _conv_pair(1, 2)
  fast_ir = jax.jit(f('shifted')).lower(x, w).as_text()
  native_ir = jax.jit(f('native')).lower(x, w).as_text()
  assert 'convolution' not in fast_ir
  assert 'convolution' in native_ir


@pytest.mark.parametrize('stride,rate', [(1, 2), (2, 1)])
def test_shifted_forward_runs_the_shifted_sum_and_native_gradients(stride,
                                                                  rate):
  """'shifted_forward': the shifted sum's forward (no convolution traced)
  with the native conv's gradients (one per input, both equal to native's)."""
  x, w, f, kg = _conv_pair(stride, rate)
  out = f('shifted_forward')(x, w)
  np.testing.assert_allclose(out, f('native')(x, w), atol=1e-5)
  assert 'conv_general_dilated' not in str(
      jax.make_jaxpr(f('shifted_forward'))(x, w))
  cotangent = jax.random.normal(kg, out.shape)
  def grads(impl):
    return jax.grad(lambda x, w: jnp.sum(f(impl)(x, w) * cotangent), (0, 1))
  backward = str(jax.make_jaxpr(grads('shifted_forward'))(x, w))
  assert backward.count('conv_general_dilated') == 2  # dx and dw.
  for got, want in zip(jax.jit(grads('shifted_forward'))(x, w),
                       jax.jit(grads('native'))(x, w)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def _traces_a_convolution(fn, *args) -> bool:
  return 'conv_general_dilated' in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize('backend', ['gpu', 'cuda'])
def test_auto_depthwise_on_gpu_shifted_in_float32_shifted_forward_in_bf16(
    monkeypatch, backend):
  """'auto' on a GPU: the shifted sum in float32 (the H200's train step
  45 vs 71 ms); in bfloat16 its forward with cuDNN's gradients (30.5 vs
  36.4 ms); exports and other backends always native."""
  x, w, f, _ = _conv_pair(1, 2)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  def grad_convs(x, w):
    grad = jax.grad(
        lambda x, w: f('auto')(x, w).astype(jnp.float32).sum(), (0, 1))
    return str(jax.make_jaxpr(grad)(x, w)).count('conv_general_dilated')
  # Decided at trace time from the backend's name: tracing needs no GPU.
  monkeypatch.setattr(dispatch.jax, 'default_backend', lambda: backend)
  assert not _traces_a_convolution(f('auto'), x, w)
  assert grad_convs(x, w) == 0
  assert not _traces_a_convolution(f('auto'), xb, wb)
  assert grad_convs(xb, wb) == 2
  with native_ops():
    assert _traces_a_convolution(f('auto'), x, w)
    assert _traces_a_convolution(f('auto'), xb, wb)
  monkeypatch.setattr(dispatch.jax, 'default_backend', lambda: 'tpu')
  assert _traces_a_convolution(f('auto'), x, w)
  assert _traces_a_convolution(f('auto'), xb, wb)


def test_auto_depthwise_is_shifted_on_cpu_in_every_dtype():
  x, w, f, _ = _conv_pair(1, 2)
  assert not _traces_a_convolution(f('auto'), x, w)
  assert not _traces_a_convolution(f('auto'), x.astype(jnp.bfloat16),
                                   w.astype(jnp.bfloat16))


def test_shifted_bfloat16_kernel_gradient_accumulates_in_float32():
  """The kernel gradient of a bfloat16 depthwise conv sums N*H*W products
  per tap; in float32 it is as close to a float64 sum of the same bf16
  inputs as its final bf16 rounding allows (1.9e-3 here; a bf16
  accumulation gave 9.3e-3)."""
  rng = np.random.default_rng(1)
  shape = (4, 65, 65, 16)
  x, g = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for _ in 'xg')
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 16)), jnp.bfloat16)
  _, vjp = jax.vjp(lambda x, w: depthwise.shifted_depthwise_conv(
      x, w, (1, 1), (2, 2), 'SAME'), x, w)
  dx, dw = vjp(g)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  padded = np.pad(x64, ((0, 0), (2, 2), (2, 2), (0, 0)))
  expected = np.stack([
      (padded[:, 2 * i:2 * i + 65, 2 * j:2 * j + 65] * g64).sum((0, 1, 2))
      for i in range(3) for j in range(3)]).reshape(3, 3, 1, 16)
  error = np.linalg.norm(np.asarray(dw, np.float64) - expected)
  assert error / np.linalg.norm(expected) < 4e-3
