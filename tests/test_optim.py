"""The optimizer: schedules, weight-decay and bias masks, plateau, against
values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deeplab_jax import optim
from deeplab_jax.config import default_config
from deeplab_jax.models import create_model
from tests.conftest import tiny_model_config


def test_learning_rate_schedules():
  config = default_config().train
  poly = optim.learning_rate_schedule(config, 100)
  assert float(poly(0)) == pytest.approx(0.007)
  assert float(poly(50)) == pytest.approx(0.007 * 0.5 ** 0.9, rel=1e-5)
  assert float(poly(100)) == pytest.approx(0.0, abs=1e-9)
  config.warmup_steps = 10
  warm = optim.learning_rate_schedule(config, 100)
  assert float(warm(5)) == pytest.approx(0.0035)
  # After warmup the poly decay runs over the remaining 90 steps.
  assert float(warm(55)) == pytest.approx(0.007 * 0.5 ** 0.9, rel=1e-5)
  config.lr_schedule, config.inverse_time_decay, config.warmup_steps = (
      'inverse_time', 0.01, 0)
  inverse = optim.learning_rate_schedule(config, 100)
  assert float(inverse(100)) == pytest.approx(0.007 / 2)
  config.lr_schedule, config.end_learning_rate = 'cosine', 0.001
  cosine = optim.learning_rate_schedule(config, 100)
  assert float(cosine(0)) == pytest.approx(0.007)
  # Half way: the mean of start and end.
  assert float(cosine(50)) == pytest.approx((0.007 + 0.001) / 2, rel=1e-5)
  assert float(cosine(100)) == pytest.approx(0.001, rel=1e-5)
  config.lr_schedule = 'constant'
  constant = optim.learning_rate_schedule(config, 100)
  assert [float(constant(s)) for s in (0, 37, 100)] == pytest.approx(
      [0.007] * 3)


def test_num_train_steps_from_epochs_wins_over_num_steps():
  config = default_config().train
  config.num_steps, config.batch_size = 500, 6
  assert optim.num_train_steps(config, 1464) == 500
  config.num_epochs = 2.0
  assert optim.num_train_steps(config, 1464) == 488  # ceil(2 * 1464 / 6)


@pytest.fixture(scope='module')
def tiny():
  model = create_model(tiny_model_config(**{'num_classes': 3}))
  _, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  return model, params


def _convs(model):
  """{path: nnx.Conv} by walking the graph independently of optim."""
  return {tuple(str(p) for p in path): node
          for path, node in nnx.iter_graph(model)
          if isinstance(node, nnx.Conv)}


def _flat(tree):
  return {tuple(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path
                if getattr(k, 'name', None) != 'value'): v
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize('regularize_depthwise', [False, True])
def test_masks_select_conv_kernels_and_conv_biases(tiny,
                                                   regularize_depthwise):
  model, params = tiny
  masks = optim.parameter_masks(model, params, regularize_depthwise)
  decay, bias = _flat(masks.weight_decay), _flat(masks.conv_bias)
  convs = _convs(model)
  expected_decay = {
      path + ('kernel',) for path, conv in convs.items()
      if regularize_depthwise or conv.feature_group_count == 1}
  expected_bias = {path + ('bias',) for path, conv in convs.items()
                   if conv.bias is not None}
  assert {k for k, v in decay.items() if v} == expected_decay
  assert {k for k, v in bias.items() if v} == expected_bias
  # Only the classifier has a conv bias; BatchNorm scales/biases are neither.
  assert expected_bias == {('logits', 'bias')}
  assert not any(decay[k] for k in decay if k[-1] in ('scale', 'bias'))
  depthwise = [p for p, c in convs.items() if c.feature_group_count > 1]
  assert depthwise and all(
      decay[p + ('kernel',)] == regularize_depthwise for p in depthwise)


def test_update_adds_weight_decay_and_scales_conv_biases(tiny):
  """One SGD step: decayed kernels move by -lr * (g + wd * w), conv biases
  by -lr * 2 * g, everything else by -lr * g."""
  model, params = tiny
  config = default_config().train
  config.weight_decay, config.learning_rate = 0.01, 0.1
  config.lr_schedule = 'constant'
  masks = optim.parameter_masks(model, params, False)
  tx = optim.create_optimizer(config, 10, masks,
                                  freeze_backbone=False)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1))
  flat_p, flat_u = _flat(params), _flat(updates)
  decay, bias = _flat(masks.weight_decay), _flat(masks.conv_bias)
  for key, p in flat_p.items():
    p = np.asarray(p)
    if decay[key]:
      expected = -0.1 * (0.5 + 0.01 * p)
    elif bias[key]:
      expected = -0.1 * 2.0 * 0.5 * np.ones_like(p)
    else:
      expected = -0.1 * 0.5 * np.ones_like(p)
    np.testing.assert_allclose(np.asarray(flat_u[key]), expected, rtol=1e-5,
                               atol=1e-8, err_msg='/'.join(key))


def test_l2_loss_is_half_decay_times_squares_of_the_masked(tiny):
  model, params = tiny
  masks = optim.parameter_masks(model, params, False)
  expected = 0.5 * 4e-5 * sum(
      float(np.sum(np.square(np.asarray(v))))
      for k, v in _flat(params).items() if _flat(masks.weight_decay)[k])
  got = float(optim.l2_loss(params, masks.weight_decay, 4e-5))
  assert got == pytest.approx(expected, rel=1e-5)


def test_reduce_on_plateau_scales_the_learning_rate_after_patience():
  """The seed's Keras ReduceLROnPlateau: no improvement of the loss for
  `patience` windows multiplies the updates by `factor`."""
  config = default_config().train
  config.lr_schedule, config.learning_rate = 'constant', 1.0
  config.momentum, config.weight_decay, config.bias_lr_multiplier = (
      0.0, 0.0, 1.0)
  config.reduce_on_plateau_factor = 0.5
  config.reduce_on_plateau_patience = 2
  config.reduce_on_plateau_accumulation_steps = 1
  params = {'w': jnp.ones((3,))}
  masks = optim.ParameterMasks(weight_decay={'w': False},
                               conv_bias={'w': False})
  tx = optim.create_optimizer(config, 100, masks,
                                  freeze_backbone=False)
  state = tx.init(params)
  grads = {'w': jnp.ones((3,))}
  sizes = []
  for _ in range(6):  # The same loss every step: a plateau.
    updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
    sizes.append(float(-updates['w'][0]))
  assert sizes[0] == pytest.approx(1.0)
  assert sizes[-1] < sizes[0]
  assert set(np.round(np.asarray(sizes) / sizes[0], 6)) <= {1.0, 0.5, 0.25}
