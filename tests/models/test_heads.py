"""ASPP and Dense Prediction Cell structure and wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.config import SEED_DPC_BRANCHES
from deeplab_jax.models import create_model
from deeplab_jax.models.heads import ASPP, DensePredictionCell
from deeplab_jax.models.layers import SeparableConvBN
from deeplab_jax.ops import native_ops
from tests.conftest import tiny_model_config


class _Spy(nnx.Module):
  """Stands in for a branch: logs the value it reads, outputs its number."""

  def __init__(self, index, channels, log):
    self.index, self.channels, self.log = index, channels, log

  def __call__(self, x):
    self.log.append((self.index, float(x[0, 0, 0, 0])))
    return jnp.full(x.shape[:3] + (self.channels,), float(self.index + 1))


def test_dpc_branches_read_the_inputs_their_specs_name():
  branches = [
      {'kernel': 3, 'rate': [1, 6], 'op': 'conv', 'input': -1},
      {'kernel': 3, 'rate': [18, 15], 'op': 'conv', 'input': 0},
      {'kernel': 1, 'rate': [1, 1], 'op': 'conv', 'input': 1},
      {'kernel': 3, 'rate': [1, 1], 'op': 'conv', 'input': -1},
      {'kernel': 3, 'rate': [6, 21], 'op': 'conv', 'input': 2},
  ]
  dpc = DensePredictionCell(4, branches, channels=2, projection_channels=3,
                            rngs=nnx.Rngs(0))
  log = []
  dpc.branches = nnx.List([_Spy(i, 2, log) for i in range(len(branches))])
  out = nnx.view(dpc, deterministic=True, use_running_average=True)(
      jnp.full((1, 5, 5, 4), -7.0))
  # Branch i outputs i + 1, the backbone features are -7.
  assert log == [(0, -7.0), (1, 1.0), (2, 2.0), (3, -7.0), (4, 3.0)]
  assert out.shape == (1, 5, 5, 3)
  assert dpc.concat_projection.conv.in_features == 5 * 2


def test_dpc_rates_are_scaled_by_conv_rate_multiplier():
  dpc = DensePredictionCell(8, [dict(b) for b in SEED_DPC_BRANCHES],
                            channels=4, rate_multiplier=2, rngs=nnx.Rngs(0))
  rates = [b.depthwise.conv.kernel_dilation for b in dpc.branches]
  assert rates == [(2, 12), (36, 30), (12, 6), (2, 2), (12, 42)]
  # A branch reading an earlier branch takes its channels, not the
  # backbone's.
  assert dpc.branches[0].depthwise.conv.in_features == 8
  assert dpc.branches[1].depthwise.conv.in_features == 4


def test_dpc_pyramid_pooling_branch():
  branches = [{'kernel': 1, 'rate': [1, 1], 'op': 'pyramid_pooling',
               'input': -1, 'grid_size': [2, 2]}]
  dpc = DensePredictionCell(3, branches, channels=2, projection_channels=2,
                            rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
  out = nnx.view(dpc, deterministic=True, use_running_average=True)(x)
  assert out.shape == (2, 9, 9, 2)


def test_aspp_branches_and_concat_order():
  aspp = ASPP(8, channels=4, projection_channels=5, atrous_rates=(12, 24, 36),
              rngs=nnx.Rngs(0))
  assert [b.depthwise.conv.kernel_dilation for b in aspp.atrous] == [
      (12, 12), (24, 24), (36, 36)
  ]
  assert all(isinstance(b, SeparableConvBN) for b in aspp.atrous)
  # image pooling + aspp0 + 3 atrous branches.
  assert aspp.concat_projection.conv.in_features == 5 * 4
  y = nnx.view(aspp, deterministic=True, use_running_average=True)(
      jnp.ones((1, 7, 7, 8)))
  assert y.shape == (1, 7, 7, 5)


def test_reference_mobilenet_head_has_only_pooling_and_1x1():
  aspp = ASPP(8, channels=4, atrous_rates=(), rngs=nnx.Rngs(0))
  assert len(aspp.atrous) == 0 and aspp.image_pooling is not None
  assert aspp.concat_projection.conv.in_features == 2 * 4


def _randomise_batch_norm(module, seed):
  """Non-trivial BatchNorm statistics, so inference BN is not identity."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.BatchNorm):
      c = node.mean.shape[0]
      node.mean[...] = rng.normal(0, 0.3, c).astype(np.float32)
      node.var[...] = rng.uniform(0.5, 2.0, c).astype(np.float32)
      node.scale[...] = rng.uniform(0.5, 1.5, c).astype(np.float32)
      node.bias[...] = rng.normal(0, 0.2, c).astype(np.float32)


def _numpy_conv1x1_bn_relu(x, layer):
  """An independent NumPy 1x1 conv -> inference BatchNorm -> ReLU."""
  w = np.asarray(layer.conv.kernel[...])[0, 0]  # [C_in, C_out]
  bn = layer.bn
  y = x @ w
  y = (y - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) +
                                                bn.epsilon)
  y = y * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
  return np.maximum(y, 0.0)


def test_reference_head_equals_numpy_pooling_plus_1x1():
  """The reference MobileNetV2 head (no atrous branches) against NumPy:
  concat[broadcast(1x1(global mean)), 1x1(x)] -> 1x1 projection."""
  aspp = ASPP(3, channels=4, projection_channels=5, atrous_rates=(),
              rngs=nnx.Rngs(0))
  _randomise_batch_norm(aspp, 1)
  view = nnx.view(aspp, deterministic=True, use_running_average=True)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 6, 7, 3)))
  got = np.asarray(view(jnp.asarray(x)))
  pooled = _numpy_conv1x1_bn_relu(x.mean(axis=(1, 2), keepdims=True),
                                  aspp.image_pooling)
  branches = np.concatenate(
      [np.broadcast_to(pooled, (2, 6, 7, 4)),
       _numpy_conv1x1_bn_relu(x, aspp.aspp0)], axis=-1)
  expected = _numpy_conv1x1_bn_relu(branches, aspp.concat_projection)
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize('output_stride,expected', [(16, (6, 12, 18)),
                                                    (8, (12, 24, 36)),
                                                    (32, (3, 6, 9))])
def test_aspp_rates_follow_output_stride(output_stride, expected):
  model = nnx.eval_shape(lambda: create_model(
      tiny_model_config(), output_stride=output_stride))
  got = tuple(b.depthwise.conv.kernel_dilation[0] for b in model.head.atrous)
  assert got == expected


def test_explicit_conv_rate_multiplier_wins():
  model = nnx.eval_shape(lambda: create_model(
      tiny_model_config(**{'head.conv_rate_multiplier': 3}), output_stride=8))
  got = tuple(b.depthwise.conv.kernel_dilation[0] for b in model.head.atrous)
  assert got == (18, 36, 54)


def test_image_pooling_is_projected_once_and_trains_like_the_concat():
  """ASPP projects its image-pooling branch once per image
  (`ConvBN.project_concatenation`), not broadcast and concatenated: in
  training mode (batch statistics) the output, every gradient and the new
  moving statistics equal the plain concat + 1x1 conv that exports trace
  (`ops.native_ops()`)."""
  aspp = ASPP(6, channels=4, projection_channels=5, atrous_rates=(2,),
              dropout_rate=0.0, rngs=nnx.Rngs(0))
  _randomise_batch_norm(aspp, 2)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 8, 6))
  target = jax.random.normal(jax.random.PRNGKey(4), (2, 9, 8, 5))

  def loss(module, x):
    view = nnx.view(module, deterministic=True, use_running_average=False)
    return jnp.sum(view(x) * target)

  results = []
  for native in (False, True):
    module = nnx.clone(aspp)
    if native:
      with native_ops():
        value, (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1))(
            module, x)
    else:
      value, (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1))(
          module, x)
    stats = nnx.state(module, nnx.BatchStat)
    results.append((value, nnx.to_pure_dict(grads), dx,
                    nnx.to_pure_dict(stats)))
  (v0, g0, dx0, s0), (v1, g1, dx1, s1) = results
  np.testing.assert_allclose(v0, v1, rtol=1e-5)
  np.testing.assert_allclose(dx0, dx1, atol=1e-5)
  # Gradients up to about 20 summed in another order: float32 rounding.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      g0, g1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               s0, s1)
  # The statistics did move (training mode), and every kernel has a
  # gradient, the image-pooling slice of the projection's included.
  assert not np.allclose(s0['concat_projection']['bn']['mean'],
                         np.asarray(aspp.concat_projection.bn.mean[...]))
  kernel_grad = g0['concat_projection']['conv']['kernel'][0, 0]
  assert np.abs(kernel_grad[:4]).min() > 0 and np.abs(kernel_grad[4:]).max() > 0


def test_project_concatenation_needs_a_1x1_conv_and_all_channels():
  from deeplab_jax.models.layers import ConvBN  # pylint: disable=g-import-not-at-top
  conv3 = ConvBN(4, 2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='1x1 stride-1'):
    conv3.project_concatenation([jnp.ones((1, 3, 3, 4))])
  conv1 = ConvBN(4, 2, 1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='for a conv of 4 inputs'):
    conv1.project_concatenation([jnp.ones((1, 3, 3, 3))])
