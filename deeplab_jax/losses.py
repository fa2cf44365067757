"""The reference softmax cross-entropy with ignored pixels and optional
hard-pixel mining (`train_utils.add_softmax_cross_entropy_loss_for_each_scale`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
  labels = labels.astype(jnp.int32)
  keep = labels != ignore_label
  safe_labels = jnp.where(keep, labels, 0)
  pixel_losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), safe_labels)
  pixel_losses = jnp.where(keep, pixel_losses, 0.0)
  if class_weights is not None:
    weights = jnp.where(keep, jnp.asarray(class_weights, jnp.float32)[
        safe_labels], 0.0)
    pixel_losses = pixel_losses * weights
  else:
    weights = keep.astype(jnp.float32)
  if top_k_percent_pixels >= 1.0:
    return jnp.sum(pixel_losses) / jnp.maximum(jnp.sum(weights), 1e-5)
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
