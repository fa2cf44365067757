"""The assembled model: output shapes at every output stride, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.inference import programs
from deeplab_jax.models import (create_model, fold_batch_norm, format_summary,
                                inference_view, parameter_counts,
                                with_output_stride)
from deeplab_jax.ops import native_ops
from tests.conftest import REPO, tiny_model_config


def _shapes(model_config, output_stride, size):
  model = nnx.eval_shape(
      lambda: create_model(model_config, output_stride=output_stride))
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  graphdef, state = nnx.split(inference_view(model))
  def run(state, images):
    m = nnx.merge(graphdef, state)
    endpoints = m.backbone(images)
    return endpoints['features'], endpoints['low_level'], m(images)
  return jax.eval_shape(run, state, images)


@pytest.mark.parametrize('size', [257, 321, 513])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_output_shapes_for_odd_sizes(output_stride, size):
  features, low, logits = _shapes(tiny_model_config(), output_stride, size)
  feature_size = -(-size // output_stride)  # TF 'SAME': ceil.
  assert features.shape[1:3] == (feature_size, feature_size)
  # Reference rule for these sizes: (size - 1) / os + 1.
  assert feature_size == (size - 1) // output_stride + 1
  assert low.shape[1:3] == (-(-size // 4),) * 2
  assert logits.shape == (2, size, size, 21)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('head,decoder', [('dpc', 'upsample'),
                                          ('aspp', 'upsample'),
                                          ('dpc', 'deeplabv3plus')])
def test_head_and_decoder_variants(head, decoder):
  config = tiny_model_config(**{'head.type': head, 'decoder.type': decoder,
                                'num_classes': 5})
  _, _, logits = _shapes(config, 8, 65)
  assert logits.shape == (2, 65, 65, 5)


def test_with_output_stride_shares_weights_and_changes_resolution():
  config = tiny_model_config(**{'num_classes': 3})
  model = create_model(config, output_stride=16)
  eval_model = with_output_stride(model, config, 8)
  images = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
  def feature_size(m):
    graphdef, state = nnx.split(m)
    return jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s).backbone(x)['features'], state,
        images).shape[1]
  assert feature_size(eval_model) == 5
  assert feature_size(model) == 3
  assert eval_model.head.atrous[0].depthwise.conv.kernel_dilation == (12, 12)
  np.testing.assert_array_equal(eval_model.logits.kernel[...],
                                model.logits.kernel[...])


def test_summary_counts_every_array_once():
  model = create_model(tiny_model_config())
  # Independently: every nnx.Param / nnx.BatchStat leaf of the model.
  params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(
      nnx.state(model, nnx.Param)))
  stats = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(
      nnx.state(model, nnx.BatchStat)))
  counts = parameter_counts(model)
  assert sorted(counts) == ['backbone', 'decoder', 'head', 'logits']
  assert sum(c['params'] for c in counts.values()) == params
  assert sum(c['batch_stats'] for c in counts.values()) == stats
  # The classifier: a 1x1 conv with bias, 16 -> 21 channels, no BatchNorm.
  assert counts['logits'] == {'params': 16 * 21 + 21, 'batch_stats': 0}
  last = format_summary(model).splitlines()[-1].split()
  assert last == ['total', f'{params:,}', f'{stats:,}',
                  f'{params + stats:,}']


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = create_model(tiny_model_config(**{'dtype': 'bfloat16'}))
  assert model.logits.kernel[...].dtype == jnp.float32
  out = nnx.jit(lambda m, x: inference_view(m)(x))(model,
                                                   jnp.zeros((1, 33, 33, 3)))
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def _randomize_batch_norm(model, seed=0):
  """Moving statistics and affine far from the identity, so that folding
  has something to get wrong."""
  rng = np.random.default_rng(seed)
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.BatchNorm):
      shape = module.mean.shape
      module.mean[...] = rng.normal(0, 0.2, shape).astype(np.float32)
      module.var[...] = rng.uniform(0.3, 3.0, shape).astype(np.float32)
      module.scale[...] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
      module.bias[...] = rng.normal(0, 0.2, shape).astype(np.float32)


@pytest.mark.parametrize('head,decoder', [('aspp', 'deeplabv3plus'),
                                          ('dpc', 'upsample')])
def test_folded_batch_norm_matches_the_unfolded_model(head, decoder):
  config = tiny_model_config(**{'head.type': head, 'decoder.type': decoder})
  model = create_model(config, rngs=nnx.Rngs(0))
  _randomize_batch_norm(model)
  images = jnp.asarray(np.random.default_rng(1).uniform(
      -1, 1, (2, 97, 97, 3)), jnp.float32)
  # Jitted: run op by op, each model compiled ~100 kernels (15 s a test).
  run = nnx.jit(lambda m, x: m(x))
  expected = run(inference_view(model), images)
  folded = fold_batch_norm(model)
  # No BatchNorm is left, every conv has a bias, and the original keeps its
  # BatchNorm layers (the fold works on a copy).
  assert not any(isinstance(m, nnx.BatchNorm)
                 for _, m in nnx.iter_graph(folded))
  assert any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(model))
  np.testing.assert_allclose(run(folded, images), expected, rtol=0,
                             atol=1e-5)
  # What eval and predict run: folded by one compiled program, whose
  # per-image program has no BatchNorm arithmetic (no rsqrt) left.
  compiled = programs.folded(model)
  np.testing.assert_allclose(run(compiled, images), expected, rtol=0,
                             atol=1e-5)
  program = lambda m: run.lower(m, images).as_text()  # noqa: E731
  assert 'rsqrt' in program(inference_view(model))
  assert 'rsqrt' not in program(compiled)


@pytest.mark.parametrize('config_name,backbone,total', [
    ('voc_resnet50.py', 23_685_312, 26_891_013),
    ('voc_resnet101.py', 42_729_664, 45_935_365),
    ('voc_xception65.py', 38_052_512, 41_258_213),
])
def test_backbone_configs_build_with_their_counts(config_name, backbone,
                                                  total):
  # The figures of the README's backbone table and --mode=summary.
  from deeplab_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  config = load_config_file(str(REPO / 'configs' / config_name))
  model = nnx.eval_shape(lambda: create_model(config.model))
  counts = parameter_counts(model)
  def size(entry):
    return entry['params'] + entry['batch_stats']
  assert size(counts['backbone']) == backbone
  assert sum(size(c) for c in counts.values()) == total


@pytest.mark.parametrize('kernel_size', [1, 3])
def test_classifier_takes_the_cpu_dense_convs_with_native_values(kernel_size):
  # XLA:CPU's kernel gradient of the 1x1 classifier was a convolution with
  # a window as large as the feature map: 2.5x slower than the product.
  config = tiny_model_config(classifier_kernel_size=kernel_size)
  classifier = create_model(config, rngs=nnx.Rngs(0)).logits
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, classifier.in_features))
  g = jax.random.normal(jax.random.key(2), (2, 9, 11, classifier.out_features))
  def forward_and_gradients():  # A new function each time: traced anew.
    graphdef, params = nnx.split(classifier)
    def run(x):
      y, vjp = jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
      return y, vjp(g)
    return run
  trace = str(jax.make_jaxpr(forward_and_gradients())(x))
  # 1x1: one product forward, one per gradient, no convolution. 3x3
  # (dense_conv): XLA's convolution forward and for the input gradient, the
  # kernel gradient one product per tap.
  assert trace.count('dot_general') == (3 if kernel_size == 1 else 9)
  assert ('conv_general_dilated' in trace) == (kernel_size > 1)
  with native_ops():  # What exports trace: the plain convolution.
    native_trace = str(jax.make_jaxpr(forward_and_gradients())(x))
    assert 'dot_general' not in native_trace
    assert 'conv_general_dilated' in native_trace
    want = forward_and_gradients()(x)
  got = forward_and_gradients()(x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
