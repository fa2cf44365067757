"""The optimizer of the reference recipe and its variants, as optax.

* Learning rate: `LR_SCHEDULES` (poly, the reference's; cosine, constant,
  Keras inverse-time decay), with an optional linear warmup.
* L2 weight decay on conv kernels only (not BatchNorm, not biases; not
  depthwise kernels unless `regularize_depthwise`), and the reference's 2x
  learning rate for conv biases, as pytree masks computed once from the
  model (`parameter_masks`) and applied by `optax.masked`.
* `OPTIMIZERS`: SGD with momentum or Adam; optionally Keras-style
  ReduceLROnPlateau on the training loss (pass `value=loss` to `update`).

Adding an optimizer or a schedule: its function (here or in a module of
its own) and one line in its registry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from deeplab_jax.registry import Registry
from deeplab_jax.weights.tree import key_path


def num_train_steps(train_config: Any, num_examples: int) -> int:
  """`num_steps`, or ceil(num_epochs * examples / batch) when epochs are
  set (epochs win)."""
  t = train_config
  if t.num_epochs is not None:
    return max(1, math.ceil(t.num_epochs * num_examples / t.batch_size))
  return t.num_steps


def poly(t: Any, lr: float, decay_steps: int) -> optax.Schedule:
  """The reference's: lr * (1 - step / steps) ** power, down to end_lr."""
  return optax.polynomial_schedule(lr, t.end_learning_rate, t.poly_power,
                                   decay_steps)


def cosine(t: Any, lr: float, decay_steps: int) -> optax.Schedule:
  return optax.cosine_decay_schedule(lr, decay_steps,
                                     alpha=t.end_learning_rate / lr)


def inverse_time(t: Any, lr: float, decay_steps: int) -> optax.Schedule:
  """Keras-2 `decay`: lr / (1 + decay * step)."""
  del decay_steps
  decay = t.inverse_time_decay
  return lambda step: lr / (1.0 + decay * step)


def constant(t: Any, lr: float, decay_steps: int) -> optax.Schedule:
  del t, decay_steps
  return optax.constant_schedule(lr)


# config.train.lr_schedule -> (train config, peak lr, steps after warmup)
# -> schedule.
LR_SCHEDULES = Registry('learning-rate schedule', 'config.train.lr_schedule',
                        {'poly': poly, 'cosine': cosine,
                         'inverse_time': inverse_time, 'constant': constant})


def sgd(t: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.sgd(schedule, momentum=t.momentum)


def adam(t: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.adam(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps)


# config.train.optimizer -> (train config, schedule) -> transformation.
OPTIMIZERS = Registry('optimizer', 'config.train.optimizer',
                      {'sgd': sgd, 'adam': adam})


def learning_rate_schedule(train_config: Any,
                           num_steps: int) -> optax.Schedule:
  """The learning rate at each step: `LR_SCHEDULES[lr_schedule]` after an
  optional linear warmup."""
  t = train_config
  lr, warmup = t.learning_rate, t.warmup_steps
  main = LR_SCHEDULES.lookup(t.lr_schedule)(t, lr, max(1, num_steps - warmup))
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


@dataclasses.dataclass(frozen=True)
class ParameterMasks:
  """Pytrees of bools with the structure of the model's parameters."""
  weight_decay: Any  # Conv kernels that are L2-regularised.
  conv_bias: Any  # Conv biases (the reference's 2x learning rate).
  backbone: Any = None  # The backbone's parameters (freeze_backbone).


def _module_paths(model: nnx.Module, predicate) -> set[tuple[str, ...]]:
  return {
      tuple(str(p) for p in path)
      for path, node in nnx.iter_graph(model) if predicate(node)
  }


def parameter_masks(model: nnx.Module, params: Any,
                    regularize_depthwise: bool) -> ParameterMasks:
  """The weight-decay and conv-bias masks of `params` (nnx.State of
  `model`'s nnx.Param), computed once, outside any jitted step."""
  convs = _module_paths(model, lambda n: isinstance(n, nnx.Conv))
  depthwise = _module_paths(
      model, lambda n: isinstance(n, nnx.Conv) and n.feature_group_count > 1)

  def decayed(path, _):
    key = key_path(path)
    module, name = key[:-1], key[-1]
    return (name == 'kernel' and module in convs and
            (regularize_depthwise or module not in depthwise))

  def conv_bias(path, _):
    key = key_path(path)
    return key[-1] == 'bias' and key[:-1] in convs

  return ParameterMasks(
      weight_decay=jax.tree_util.tree_map_with_path(decayed, params),
      conv_bias=jax.tree_util.tree_map_with_path(conv_bias, params),
      backbone=jax.tree_util.tree_map_with_path(
          lambda path, _: key_path(path)[0] == 'backbone', params))


def l2_loss(params: Any, mask: Any, weight_decay: float) -> jax.Array:
  """0.5 * weight_decay * sum of squares of the masked parameters (the
  reference's regularisation loss, for logging and the plateau value)."""
  # One reduction over the flattened weights, not one per array: fewer
  # kernels for XLA to compile in the train step.
  masked = [jnp.ravel(w).astype(jnp.float32) for w, m in zip(
      jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  if not masked:
    return jnp.float32(0)
  return 0.5 * weight_decay * jnp.sum(jnp.square(jnp.concatenate(masked)))


def create_optimizer(train_config: Any, num_steps: int,
                     masks: ParameterMasks, *,
                     freeze_backbone: bool
                     ) -> optax.GradientTransformationExtraArgs:
  """decay (masked) -> bias multiplier (masked) -> SGD/Adam [-> plateau]
  [-> backbone updates zeroed].

  `freeze_backbone`: the resolved decision (`train_step.backbone_policy`),
  not `train_config.freeze_backbone`, whose None means automatic.

  Adding `weight_decay * w` to the masked gradients equals the gradient of
  the reference's L2 loss 0.5 * weight_decay * |w|^2 added to the loss.
  """
  t = train_config
  schedule = learning_rate_schedule(t, num_steps)
  parts = []
  if t.weight_decay > 0:
    parts.append(optax.masked(optax.add_decayed_weights(t.weight_decay),
                              masks.weight_decay))
  if t.bias_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(t.bias_lr_multiplier),
                              masks.conv_bias))
  parts.append(OPTIMIZERS.lookup(t.optimizer)(t, schedule))
  if t.reduce_on_plateau_factor is not None:
    parts.append(optax.contrib.reduce_on_plateau(
        factor=t.reduce_on_plateau_factor,
        patience=t.reduce_on_plateau_patience,
        accumulation_size=t.reduce_on_plateau_accumulation_steps,
        min_scale=1e-8 / t.learning_rate))
  if freeze_backbone:  # Last: no update (decay included) reaches them.
    parts.append(optax.masked(optax.set_to_zero(), masks.backbone))
  return optax.with_extra_args_support(optax.chain(*parts))
