"""The train state and the jitted, data-parallel train step.

One step: micro-batches (`train.accumulate_steps`) scanned inside the jit,
the configured losses and their gradients, the optimizer update, the EMA of
the weights, and a finiteness check of what it writes; the BatchNorm and
backbone policies say what trains. `train.Trainer` builds and runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from deeplab_jax import losses, optim
from deeplab_jax.data.datasets import dataset_spec
from deeplab_jax.weights import pretrained


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator; `ema` is
  {'params', 'batch_stats'} averaged over the steps (`train.ema_decay`),
  or None."""
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: Any
  rng: jax.Array
  ema: Any = None


# ------------------------------------------------------------ train step


def batch_norm_policy(config: ml_collections.ConfigDict, devices: int
                      ) -> tuple[bool, str, str | None]:
  """(freeze BatchNorm?, why, a warning or None) for a run.

  Automatic (`train.freeze_batch_norm` None): frozen when the per-device
  batch is below `train.batch_norm_min_batch` (the reference fine-tunes
  BatchNorm only with 12 or more images per device) or when `init_from`
  has folded BatchNorm (TFLite exports: their identity statistics would be
  replaced by batch statistics the weights never saw). Decided from the
  config alone, so a resumed run decides the same way.
  """
  t = config.train
  # With accumulation BatchNorm sees one micro-batch at a time.
  per_device = t.batch_size // max(devices, 1) // t.accumulate_steps
  small = per_device < t.batch_norm_min_batch
  folded = pretrained.has_folded_batch_norm(t.init_from)
  where = ('per device' if t.accumulate_steps == 1 else
           f'per device in each of {t.accumulate_steps} micro-batches')
  risks = []
  if small:
    risks.append(f'{per_device} image(s) {where} is below '
                 f'config.train.batch_norm_min_batch = '
                 f'{t.batch_norm_min_batch}, too few for stable batch '
                 'statistics')
  if folded:
    risks.append(f'{t.init_from} has BatchNorm folded into its convolutions,'
                 ' which batch statistics would undo')
  # Frozen from random weights, BatchNorm keeps its initial statistics
  # (mean 0, variance 1): the demo, so frozen, reached mIoU 0.18, not 0.82.
  fix = ('--config.train.freeze_batch_norm=False' if t.freeze_batch_norm
         else f'--config.train.batch_norm_min_batch={max(per_device, 1)}')
  from_scratch = None if t.init_from else (
      'BatchNorm is frozen but the model starts from random weights '
      '(config.train.init_from is unset): it keeps its initial statistics '
      f'and training is unlikely to converge. Train it with {fix}, or start '
      'from pretrained weights.')
  if t.freeze_batch_norm is None:
    if risks:
      return True, 'BatchNorm frozen (moving statistics): ' + '; '.join(
          risks) + '.', from_scratch
    return False, (f'BatchNorm trains on batch statistics ({per_device} '
                   f'images {where}).'), None
  if t.freeze_batch_norm:
    return (True, 'BatchNorm frozen (config.train.freeze_batch_norm=True).',
            from_scratch)
  warning = None
  if risks:
    warning = ('config.train.freeze_batch_norm=False trains BatchNorm on '
               'batch statistics although ' + '; '.join(risks) + ': a '
               'pretrained model can lose most of its accuracy within a few '
               'dozen steps. Leave it unset (automatic) unless you mean it.')
  return False, 'BatchNorm trains on batch statistics (forced).', warning


def backbone_policy(config: ml_collections.ConfigDict
                    ) -> tuple[bool, str | None, str | None]:
  """(freeze the backbone?, why or None, a warning or None) for a run.

  Automatic (`train.freeze_backbone` None): frozen when `init_from` has
  BatchNorm folded into its convolutions (the TFLite exports), whose
  backbone has no normalisation left to keep its features in range.
  Measured (60 steps at 1e-4, batch 4, 321 crops, the 26 VOC sample train
  images; mIoU on the 6 val images): the dm0.5 quantized model trained
  whole fell from 0.721 to 0.640; with its backbone frozen it kept 0.724.
  At 1e-3 and 1e-2 the float dm0.5 backbone lost its features outright
  (person IoU 0.0). Decided from the config alone, so a resumed run
  decides the same way.
  """
  t = config.train
  folded = pretrained.has_folded_batch_norm(t.init_from)
  if t.freeze_backbone is None:
    if folded:
      return True, (f'Backbone frozen: {t.init_from} has BatchNorm folded '
                    'into its convolutions; the head, decoder and '
                    'classifier train (set '
                    '--config.train.freeze_backbone=False to train it too).'
                    ), None
    return False, None, None
  if t.freeze_backbone:
    return True, 'Backbone frozen (config.train.freeze_backbone=True).', None
  if folded:
    return False, None, (
        f'config.train.freeze_backbone=False trains the backbone of '
        f'{t.init_from}, whose BatchNorm is folded into its convolutions: '
        f'at config.train.learning_rate = {t.learning_rate} such a backbone '
        'tends to lose its features (measured: -8 mIoU points in 60 steps '
        'at 1e-4 for the dm0.5 quantized model; 3e-5 kept it). Leave it '
        'unset (automatic: frozen) unless you mean it.')
  return False, None, None


def micro_batches(batch: dict[str, jax.Array], count: int, devices: int
                  ) -> dict[str, jax.Array]:
  """[B, ...] arrays -> [count, B / count, ...], each micro-batch taking
  its share of every device's block of the batch (sharded over `devices`),
  so that no image moves between devices."""
  def split(x):
    per_device = x.shape[0] // devices
    # Device d holds rows [d * per_device, (d + 1) * per_device): micro-
    # batch i takes rows i * per_device / count of each device's block.
    x = x.reshape((devices, count, per_device // count) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((count, devices * (per_device // count)) + x.shape[3:])
  return {k: split(v) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict,
                    masks: optim.ParameterMasks,
                    schedule: optax.Schedule,
                    freeze_batch_norm: bool,
                    class_weights: np.ndarray | None = None, *,
                    freeze_backbone: bool, devices: int = 1) -> Callable:
  """The (unjitted) train step: (state, batch) -> (state, metrics).

  The loss is `train.loss`'s weighted terms (deeplab_jax/losses/). With
  `train.accumulate_steps` = k > 1 the batch runs as k micro-batches in a
  `lax.scan` inside the step, gradients summed: one optimizer step, the
  schedule, the data position and checkpoints counting it as one (a scan,
  not optax.MultiSteps, which would make every micro-batch a step of its
  own: another data position, schedule and checkpoint count). Pixel-mean
  terms divide by the whole batch's labelled pixels, so k micro-batches
  take exactly the full batch's step when BatchNorm is frozen; trained
  BatchNorm normalises each micro-batch by its own statistics and updates
  its moving averages once per micro-batch. The L2 term and the bias
  multiplier live in `tx` (masked transforms); the L2 loss is computed here
  only to report it (and for the plateau).
  """
  t = config.train
  ignore_label = dataset_spec(config.data).ignore_label
  terms = losses.terms_of(t.loss)
  count = t.accumulate_steps
  num_classes = config.model.num_classes

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    context = losses.LossContext(ignore_label, num_classes, class_weights,
                                 state.step, t)
    labels = batch['label'].astype(jnp.int32)
    step_key = jax.random.fold_in(state.rng, state.step)

    def micro_step(stats, micro, index):
      images, micro_labels = micro['image'], micro['label'].astype(jnp.int32)

      def loss_fn(params):
        if freeze_backbone:
          params = _stop_backbone_gradients(params, masks.backbone)
        model = nnx.merge(graphdef, params, stats, copy=True)
        if freeze_batch_norm:
          model = nnx.view(model, use_running_average=True)
        elif freeze_backbone:  # Its statistics fixed too.
          model.backbone = nnx.view(model.backbone, use_running_average=True)
        key = step_key if index is None else jax.random.fold_in(step_key,
                                                                index)
        logits = model(images, rngs=nnx.Rngs(dropout=key))
        total, shares = losses.weighted_parts(terms, logits, micro_labels,
                                              context, totals)
        return total, (logits, nnx.state(model, nnx.BatchStat), shares)

      (total, (logits, new_stats, shares)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
      valid = micro_labels != ignore_label
      correct = (jnp.argmax(logits, -1) == micro_labels) & valid
      return new_stats, grads, (total, shares, jnp.sum(correct),
                                jnp.sum(valid))

    if count == 1:
      totals = losses.denominators(terms, labels, context)
      new_stats, grads, outputs = micro_step(state.batch_stats, batch, None)
    else:
      micro = micro_batches(batch, count, devices)
      totals = jnp.sum(jax.vmap(lambda l: losses.denominators(
          terms, l.astype(jnp.int32), context))(micro['label']), axis=0)

      def scan_body(carry, inputs):
        stats, grads_sum = carry
        index, one = inputs
        stats, grads, outputs = micro_step(stats, one, index)
        return (stats, jax.tree.map(jnp.add, grads_sum, grads)), outputs

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (new_stats, grads), per_micro = jax.lax.scan(
          scan_body, (state.batch_stats, zeros), (jnp.arange(count), micro))
      outputs = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_micro)
    data_loss, shares, correct, valid = outputs
    weight_decay = optim.l2_loss(state.params, masks.weight_decay,
                                 t.weight_decay)
    loss = data_loss + weight_decay
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   value=loss)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
      ema = optax.incremental_update(
          {'params': params, 'batch_stats': new_stats}, ema,
          1.0 - t.ema_decay)
    new_state = TrainState(state.step + 1, params, new_stats, opt_state,
                           state.rng, ema)
    # A step is accepted only if the loss and everything it produces
    # (parameters, BatchNorm statistics, optimizer state) are finite: one
    # reduction XLA fuses into the step, no extra host sync. A rejected step
    # leaves the state untouched (so no checkpoint ever holds a non-finite
    # value); the loop then stops.
    state_finite = all_finite((params, new_stats, opt_state, ema))
    finite = jnp.isfinite(loss) & state_finite
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state, state)
    metrics = {
        'loss': loss,
        'weight_decay_loss': weight_decay,
        'pixel_accuracy': correct / jnp.maximum(valid, 1),
        'learning_rate': schedule(state.step),
        'finite': finite,
        'state_finite': state_finite,
    }
    metrics.update({name: share for name, share in zip(terms.names, shares)})
    return new_state, metrics

  return train_step


def _stop_backbone_gradients(params: Any, backbone_mask: Any) -> Any:
  """`params` with the backbone's behind stop_gradient.

  The optimizer zeroes a frozen backbone's updates; without this the step
  would still differentiate through the backbone for gradients it then
  throws away. With it, the backward pass ends at the backbone's outputs
  (the images need no gradient): the head's, decoder's and classifier's
  gradients are unchanged, the backbone's are zeros XLA never computes.
  """
  leaves, treedef = jax.tree.flatten(params)
  frozen = jax.tree.leaves(backbone_mask)
  return jax.tree.unflatten(treedef, [
      jax.lax.stop_gradient(x) if is_backbone else x
      for x, is_backbone in zip(leaves, frozen, strict=True)])


def all_finite(tree: Any) -> jax.Array:
  """True when every floating-point value of `tree` is finite (one fused
  reduction).

  The leaves are flattened into one vector first: a reduction per leaf
  would be ~500 kernels in a MobileNetV2 train step, which made XLA:CPU
  compile the step 20-30% slower (the concatenation it materialises costs
  the step nothing measurable).
  """
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves)))
