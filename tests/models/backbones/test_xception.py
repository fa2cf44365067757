"""Xception-65: a zoo-style checkpoint (reference names and shapes, random
values, unfolded BatchNorm) packed as a .tar.gz loads with every variable
used, and the backbone equals an independent NumPy forward pass."""

import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.weights.tree import copy_matching
from deeplab_jax.config import default_config
from deeplab_jax.models import backbones, create_model
from deeplab_jax.models.backbones.xception import Xception65
from deeplab_jax.models.layers import ConvBN
from deeplab_jax.weights import pretrained, tf_checkpoint
from deeplab_jax.weights.common import check_filled
from tests.conftest import abstract

EPS = 1e-3  # The reference's Xception BatchNorm epsilon.

# The reference's xception_65 blocks, written out again for the NumPy model:
# (scope, depths, skip, ReLU inside the separable convs, units, stride).
BLOCKS = [
    ('entry_flow/block1', (128, 128, 128), 'conv', False, 1, 2),
    ('entry_flow/block2', (256, 256, 256), 'conv', False, 1, 2),
    ('entry_flow/block3', (728, 728, 728), 'conv', False, 1, 2),
    ('middle_flow/block1', (728, 728, 728), 'sum', False, 16, 1),
    ('exit_flow/block1', (728, 1024, 1024), 'conv', False, 1, 2),
    ('exit_flow/block2', (1536, 1536, 2048), 'none', True, 1, 1),
]


# ---------------------------------------------------------------- NumPy


def np_conv(x, w, stride=1, rate=1, depthwise=False):
  """conv2d_same: stride 1 'SAME'; stride > 1 pads (k_eff - 1) split
  floor/ceil, then VALID. x [H, W, C] float64; w HWIO or [k, k, C, 1]."""
  k = w.shape[0]
  total = (k - 1) * rate
  x = np.pad(x, ((total // 2, total - total // 2),) * 2 + ((0, 0),))
  h = (x.shape[0] - total - 1) // stride + 1
  wd = (x.shape[1] - total - 1) // stride + 1
  out = 0.0
  for i in range(k):
    for j in range(k):
      patch = x[i * rate:i * rate + (h - 1) * stride + 1:stride,
                j * rate:j * rate + (wd - 1) * stride + 1:stride]
      out = out + (patch * w[i, j, :, 0] if depthwise else patch @ w[i, j])
  return out


def np_bn(x, v, scope):
  return ((x - v[f'{scope}/BatchNorm/moving_mean']) /
          np.sqrt(v[f'{scope}/BatchNorm/moving_variance'] + EPS) *
          v[f'{scope}/BatchNorm/gamma'] + v[f'{scope}/BatchNorm/beta'])


def relu(x):
  return np.maximum(x, 0)


def np_xception65(image, v, output_stride):
  """The reference network, from its description (no code of ours)."""
  s = 'xception_65'
  x = relu(np_bn(np_conv(image, v[f'{s}/entry_flow/conv1_1/weights'], 2), v,
                 f'{s}/entry_flow/conv1_1'))
  x = relu(np_bn(np_conv(x, v[f'{s}/entry_flow/conv1_2/weights']), v,
                 f'{s}/entry_flow/conv1_2'))
  current, rate, low = 2, 1, None
  for scope, depths, skip, inside, units, stride in BLOCKS:
    for u in range(units):
      if current == output_stride:
        unit_stride, unit_rate = 1, rate
        rate *= stride
      else:
        unit_stride, unit_rate = stride, 1
        current *= stride
      prefix = f'{s}/{scope}/unit_{u + 1}/xception_module'
      residual = x
      for i in range(3):
        name = f'{prefix}/separable_conv{i + 1}'
        if not inside:
          residual = relu(residual)
        residual = np_bn(np_conv(
            residual, v[f'{name}_depthwise/depthwise_weights'],
            unit_stride if i == 2 else 1, unit_rate, depthwise=True), v,
                         f'{name}_depthwise')
        if inside:
          residual = relu(residual)
        residual = np_bn(np_conv(residual, v[f'{name}_pointwise/weights']),
                         v, f'{name}_pointwise')
        if inside:
          residual = relu(residual)
        if scope == 'entry_flow/block2' and i == 1:
          low = residual
      if skip == 'conv':
        shortcut = np_bn(
            np_conv(x, v[f'{prefix}/shortcut/weights'], unit_stride), v,
            f'{prefix}/shortcut')
        x = residual + shortcut
      elif skip == 'sum':
        x = residual + x
      else:
        x = residual
  return x, low


# ------------------------------------------------------------ checkpoint


def zoo_variables(model, rng):
  """{reference name: random array} for every layer of `model`."""
  variables = {}
  for scope, target in model.tf_scopes().items():
    if isinstance(target, ConvBN):
      kernel = target.conv.kernel
      kh, kw, c_in, c_out = kernel.shape
      if c_in == 1 and target.conv.feature_group_count > 1:  # Depthwise.
        variables[f'{scope}/depthwise_weights'] = rng.normal(
            0, np.sqrt(2 / 9), (kh, kw, c_out, 1))
      else:
        variables[f'{scope}/weights'] = rng.normal(
            0, np.sqrt(1 / (kh * kw * c_in)), (kh, kw, c_in, c_out))
      for name, value in (('gamma', rng.uniform(0.5, 1.5, c_out)),
                          ('beta', rng.normal(0, 0.2, c_out)),
                          ('moving_mean', rng.normal(0, 0.2, c_out)),
                          ('moving_variance', rng.uniform(0.5, 1.5, c_out))):
        variables[f'{scope}/BatchNorm/{name}'] = value
    else:  # The classifier.
      variables[f'{scope}/weights'] = rng.normal(0, 0.01, target.kernel.shape)
      variables[f'{scope}/biases'] = rng.normal(0, 0.01, target.bias.shape)
  return {k: np.asarray(v, np.float32) for k, v in variables.items()}


def write_zoo_archive(variables, folder):
  """model.ckpt-30000 in `folder`, packed as the zoo packs it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  names = list(variables) + ['global_step']
  tensors = [tf.constant(variables[n]) for n in variables]
  tensors.append(tf.constant(np.int64(30000)))
  tf.raw_ops.SaveV2(prefix=str(folder / 'model.ckpt-30000'),
                    tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=tensors)
  archive = folder.parent / f'{folder.name}.tar.gz'
  # Level 0: still the gzip stream the zoo serves and the reader unpacks,
  # but random weights do not deflate (level 1 took 4.5 s on Xception-65's).
  with tarfile.open(archive, 'w:gz', compresslevel=0) as tar:
    tar.add(folder, arcname=folder.name)
  return archive


def xception_config():
  config = default_config()
  config.model.backbone = backbones.backbone_config('xception_65')
  config.eval.output_stride = 16
  return config


def test_zoo_archive_loads_every_variable_and_matches_numpy(tmp_path):
  config = xception_config()
  # Abstract: an array the file does not fill stays a shape (check_filled).
  model = nnx.eval_shape(lambda: create_model(config.model,
                                              output_stride=16))
  variables = zoo_variables(model, np.random.default_rng(0))
  archive = write_zoo_archive(variables, tmp_path / 'deeplabv3_pascal_x65')

  # Every variable of the file is used, and every layer of the model filled.
  read = tf_checkpoint.read_checkpoint(archive)
  used = tf_checkpoint.load_into(model, read, str(archive))
  assert sorted(used) == sorted(variables)
  assert set(read) - set(used) == {'global_step'}
  check_filled(model, str(archive))

  # As a user would: init_from the archive's URL.
  weights = pretrained.read_init_weights(archive.as_uri(), config)
  # Into the same model with every array zeroed (a second Xception-65 took
  # 6 s to initialise): what the comparison below sees was copied.
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats = jax.tree.map(jnp.zeros_like, (params, stats))
  params, stats, report = copy_matching(params, stats, weights, scope='model')
  assert report['loaded'] > 0 and not report['skipped']
  assert not report['missing']
  backbone = nnx.view(nnx.merge(graphdef, params, stats).backbone,
                      use_running_average=True)

  # 36 is even: the strided convs' explicit padding differs from TF 'SAME'.
  image = np.random.default_rng(1).uniform(-1, 1, (36, 30, 3))
  want, want_low = np_xception65(image.astype(np.float64),
                                 {k: v.astype(np.float64)
                                  for k, v in variables.items()}, 16)
  got = nnx.jit(lambda b, x: b(x))(backbone,
                                   jnp.asarray(image[None], jnp.float32))
  assert got['features'].shape[1:] == want.shape == (3, 2, 2048)
  assert got['low_level'].shape[1:] == want_low.shape == (9, 8, 256)
  assert np.abs(want).max() > 0.1  # Not a degenerate comparison.
  # Features reach ~70 after 65 layers of random weights (the middle flow
  # sums 16 residuals): 1e-4 relative to that size (measured: 1.1e-4 abs).
  scale = max(1.0, np.abs(want).max())
  np.testing.assert_allclose(got['low_level'][0], want_low, atol=1e-4)
  np.testing.assert_allclose(got['features'][0], want, atol=1e-4 * scale)


@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_output_shapes_for_odd_sizes(output_stride):
  backbone = abstract(lambda: Xception65(output_stride=output_stride,
                                         rngs=nnx.Rngs(0)))
  for h, w in [(33, 33), (65, 47)]:
    out = nnx.eval_shape(lambda b, x: b(x), backbone,
                         jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32))
    assert out['features'].shape == (2, -(-h // output_stride),
                                     -(-w // output_stride), 2048)
    assert out['low_level'].shape == (2, -(-h // 4), -(-w // 4), 256)


def test_atrous_rates_at_output_stride_8():
  backbone = abstract(lambda: Xception65(output_stride=8,
                                         multi_grid=(1, 2, 4),
                                         rngs=nnx.Rngs(0)))
  rates = {u.scope: (u.stride, u.rates) for u in backbone.layouts}
  assert rates['entry_flow/block2/unit_1'] == (2, (1, 1, 1))
  assert rates['entry_flow/block3/unit_1'] == (1, (1, 1, 1))
  assert rates['middle_flow/block1/unit_16'] == (1, (2, 2, 2))
  assert rates['exit_flow/block1/unit_1'] == (1, (2, 2, 2))
  assert rates['exit_flow/block2/unit_1'] == (1, (4, 8, 16))
