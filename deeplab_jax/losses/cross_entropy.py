"""The reference softmax cross-entropy with ignored pixels, class weights
and optional hard-pixel mining
(`train_utils.add_softmax_cross_entropy_loss_for_each_scale`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from deeplab_jax.losses.base import (LossContext, as_float, labelled,
                                      pixel_weights)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        context: LossContext) -> jax.Array:
  """[N, H, W] float32 cross-entropy of each pixel times its class weight
  (0 where ignored)."""
  keep, safe = labelled(labels, context)
  losses = optax.softmax_cross_entropy_with_integer_labels(
      as_float(logits), safe)
  return jnp.where(keep, losses, 0.0) * pixel_weights(labels, context)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          ignore_label: int,
                          top_k_percent_pixels: float = 1.0,
                          hard_example_mining_step: int = 0,
                          step: jax.Array | int = 0,
                          class_weights: jax.Array | None = None
                          ) -> jax.Array:
  """Mean cross-entropy over the labelled (or the hardest) pixels.

  Args:
    logits: [N, H, W, C] float logits at the label resolution.
    labels: [N, H, W] int class ids; `ignore_label` pixels are skipped.
    top_k_percent_pixels: < 1 keeps only that fraction of all pixels with the
      largest losses (ignored pixels have loss 0).
    hard_example_mining_step: steps over which the kept fraction anneals
      linearly from 1 to top_k_percent_pixels (0: from the start).
    step: the global step (for the annealing).
    class_weights: None, or [C] float weights: each pixel's loss is scaled
      by its class's weight and the mean is over the summed weights (as
      PyTorch's `CrossEntropyLoss(weight=...)`).

  Returns:
    Scalar float32 loss (0 when no pixel is labelled).
  """
  context = LossContext(ignore_label, logits.shape[-1], class_weights, step)
  pixel_losses = pixel_cross_entropy(logits, labels, context)
  if top_k_percent_pixels >= 1.0:
    return jnp.sum(pixel_losses) / jnp.maximum(
        jnp.sum(pixel_weights(labels, context)), 1e-5)
  flat = pixel_losses.reshape(-1)
  num_pixels = flat.shape[0]
  if hard_example_mining_step > 0:
    ratio = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) /
                        hard_example_mining_step)
    fraction = ratio * top_k_percent_pixels + (1.0 - ratio)
  else:
    fraction = jnp.float32(top_k_percent_pixels)
  k = (fraction * num_pixels).astype(jnp.int32)
  # top_k needs a static k: sort once and mask the ranks beyond k.
  ranked = jnp.sort(flat)[::-1]
  selected = jnp.arange(num_pixels) < k
  top = jnp.where(selected, ranked, 0.0)
  num_present = jnp.sum((top != 0.0).astype(jnp.float32))
  return jnp.sum(top) / jnp.maximum(num_present, 1e-5)


class CrossEntropy:
  """'cross_entropy': the mean over labelled pixels (weighted by
  `train.class_weights`), or with `train.top_k_percent_pixels` < 1 the
  mean over the hardest pixels of each (micro-)batch."""

  def denominator(self, labels, context):
    if context.options.top_k_percent_pixels < 1.0:
      return jnp.float32(1.0)
    return jnp.sum(pixel_weights(labels, context))

  def numerator(self, logits, labels, context):
    t = context.options
    if t.top_k_percent_pixels < 1.0:
      return softmax_cross_entropy(
          logits, labels, ignore_label=context.ignore_label,
          top_k_percent_pixels=t.top_k_percent_pixels,
          hard_example_mining_step=t.hard_example_mining_step,
          step=context.step, class_weights=context.class_weights)
    return jnp.sum(pixel_cross_entropy(logits, labels, context))
