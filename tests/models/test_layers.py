"""Depthwise fast path vs native conv, TF 'SAME' padding, resize semantics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from deeplab_jax.models import layers


def _conv_pair(stride, rate, multiplier=1, size=(13, 10), channels=6):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(stride * 10 + rate), 3)
  x = jax.random.normal(kx, (2, *size, channels))
  w = jax.random.normal(kw, (3, 3, 1, channels * multiplier))
  def f(impl):
    return lambda x, w: layers.depthwise_conv(x, w, stride, rate, impl)
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
    return lambda x, w: layers.depthwise_conv(x, w, 1, (1, 3), impl)
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
  monkeypatch.setattr(layers.jax, 'default_backend', lambda: backend)
  assert not _traces_a_convolution(f('auto'), x, w)
  assert grad_convs(x, w) == 0
  assert not _traces_a_convolution(f('auto'), xb, wb)
  assert grad_convs(xb, wb) == 2
  with layers.native_ops():
    assert _traces_a_convolution(f('auto'), x, w)
    assert _traces_a_convolution(f('auto'), xb, wb)
  monkeypatch.setattr(layers.jax, 'default_backend', lambda: 'tpu')
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
  _, vjp = jax.vjp(lambda x, w: layers.shifted_depthwise_conv(
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


def test_tf_same_padding_is_asymmetric_for_even_inputs():
  # TF pads 0 before and 1 after for a stride-2 3x3 conv on an even size;
  # PyTorch's padding=1 pads 1 on both sides and samples other pixels.
  assert layers.tf_same_padding(8, 3, 2) == (0, 1)
  assert layers.tf_same_padding(9, 3, 2) == (1, 1)
  assert layers.tf_same_padding(33, 3, 1, rate=4) == (4, 4)
  conv = layers.ConvBN(1, 1, 3, strides=2, activation=None,
                       rngs=nnx.Rngs(0))
  conv.conv.kernel[...] = jnp.ones((3, 3, 1, 1))
  x = jnp.arange(64.0).reshape(1, 8, 8, 1)
  out = nnx.view(conv, use_running_average=True)(x)[0, :, :, 0]
  eps = conv.bn.epsilon
  tf_style = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (2, 2),
                                      ((0, 1), (0, 1)),
                                      dimension_numbers=('NHWC', 'HWIO',
                                                         'NHWC'))[0, :, :, 0]
  torch_style = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (2, 2),
                                         ((1, 1), (1, 1)),
                                         dimension_numbers=('NHWC', 'HWIO',
                                                            'NHWC'))[0, :, :,
                                                                     0]
  np.testing.assert_allclose(out * np.sqrt(1 + eps), tf_style, rtol=1e-6)
  assert not np.allclose(out * np.sqrt(1 + eps), torch_style)


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
  pad = layers.fixed_padding(3, rate)
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
  got = layers.resize_bilinear(jnp.asarray(x), out_hw)
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
  dx = jax.grad(lambda x: jnp.sum(layers.resize_bilinear(x, out_hw) * g))(
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
  fast = jax.jit(lambda x: layers.resize_bilinear(x, (257, 257)))
  fast_text, fast_out = fast.lower(x).as_text(), fast(x)
  with layers.native_ops():
    plain = jax.jit(lambda x: layers.resize_bilinear(x, (257, 257)))
    plain_text, plain_out = plain.lower(x).as_text(), plain(x)
  np.testing.assert_allclose(fast_out, plain_out, atol=1e-5)
  assert 'gather' in fast_text and 'dot_general' not in fast_text
  assert 'gather' not in plain_text and 'dot_general' in plain_text


def test_align_corners_differs_from_jax_image_resize_half_pixel():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  ours = layers.resize_bilinear(x, (7, 7))
  half_pixel = jax.image.resize(x, (1, 7, 7, 1), 'bilinear')
  # Along a row of 0, 1, 2, 3 resized to 7: align corners samples at
  # j * 3/6 (output 1 -> 0.5); half-pixel at (j + 0.5) * 4/7 - 0.5 (-> 0.357).
  assert float(ours[0, 0, 1, 0]) == pytest.approx(0.5)
  assert float(half_pixel[0, 0, 1, 0]) == pytest.approx(1.5 * 4 / 7 - 0.5)
  assert float(jnp.abs(ours - half_pixel).max()) > 0.1
  # Our half-pixel mode does match jax.image.resize (upsampling).
  np.testing.assert_allclose(
      layers.resize_bilinear(x, (7, 7), align_corners=False), half_pixel,
      atol=1e-5)


def test_scale_dimension_matches_reference_rule():
  assert layers.scale_dimension(513, 1 / 16) == 33
  assert layers.scale_dimension(513, 1 / 4) == 129
  assert layers.scale_dimension(513, 0.5) == 257


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
  y, vjp = jax.vjp(layers.pointwise_dot, x, w)
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
  ours = kernel_gradient(layers.pointwise_dot)
  # The kernel gradient's product: [c_in, c_out] with x on the left,
  # [c_out, c_in] (then transposed) with the output gradient there.
  products = re.findall(r'f32\[(\d+),(\d+)\] = dot_general', ours)
  gradient_left = c_in >= 1024 and c_out < c_in
  expected = (c_out, c_in) if gradient_left else (c_in, c_out)
  assert products == [tuple(str(n) for n in expected)]
  assert ('transpose' in ours) == gradient_left
  x16, w16, g16 = (a.astype(jnp.bfloat16) for a in (x, w, g))
  dx16, dw16 = jax.vjp(layers.pointwise_dot, x16, w16)[1](g16)
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
  got = layers.dense_conv(x16, w16, (2, 2), (1, 1), 'SAME')
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
    return layers.dense_conv(x, w, (stride, stride), (rate, rate), padding)
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
  jaxpr = str(jax.make_jaxpr(lambda x: layers.ConvBN(
      channels, 6, 3, rngs=nnx.Rngs(0)).conv(x))(x))
  assert 'dense_conv' in jaxpr or 'custom_vjp_call' in jaxpr


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
  pool = lambda x: layers.max_pool(x, window, strides, pads)
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
  with layers.native_ops():
    assert 'select_and_scatter' in gradient_jaxpr()


def test_max_pool_after_a_fused_batch_norm_trains_like_the_native_pool():
  # In a jitted train step XLA fuses BatchNorm and ReLU into their
  # consumers and may recompute them in the backward pass in another order
  # of operations: a gradient that compared those values with the forward
  # pass's maxima found no maximum in some windows (the gradients here
  # were off by up to 2.0, against a largest of 35).
  x = np.random.default_rng(0).standard_normal((2, 33, 33, 3), np.float32)
  conv = layers.ConvBN(3, 8, 3, strides=2, rngs=nnx.Rngs(0))
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
  want = gradients(layers._reduce_window_max)  # pylint: disable=protected-access
  for got, expected in zip(gradients(layers.max_pool), want, strict=True):
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
