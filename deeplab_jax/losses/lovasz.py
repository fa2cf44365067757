"""Lovasz-softmax (Berman et al. 2018): the Lovasz extension of the
Jaccard loss of each class, a convex surrogate that optimises IoU itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deeplab_jax.losses.base import as_float, labelled


def lovasz_gradient(foreground_sorted: jax.Array, valid_sorted: jax.Array
                    ) -> jax.Array:
  """The Lovasz extension's weights for errors sorted in decreasing order:
  the Jaccard loss of each prefix minus that of the one before (Berman et
  al.'s Algorithm 1). Positions past the valid ones get weight 0."""
  fg = foreground_sorted * valid_sorted
  total = jnp.sum(fg)
  intersection = total - jnp.cumsum(fg)
  union = total + jnp.cumsum((1.0 - fg) * valid_sorted)
  jaccard = 1.0 - intersection / jnp.maximum(union, 1e-12)
  gradient = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
  return gradient * valid_sorted


def lovasz_flat(probs: jax.Array, labels: jax.Array, keep: jax.Array,
                num_classes: int) -> jax.Array:
  """The mean over present classes of the Lovasz extension of the Jaccard
  loss, for [P, C] probabilities, [P] labels and [P] labelled pixels."""
  keep_f = keep.astype(probs.dtype)

  def per_class(c):
    fg = (labels == c).astype(probs.dtype)
    errors = jnp.abs(fg - probs[:, c])
    # Ignored pixels sort last (key -1) and weigh nothing: the weights of
    # the valid ones depend only on the valid pixels before them.
    key = jnp.where(keep, errors, -1.0)
    order = jnp.argsort(-key)
    weights = lovasz_gradient(fg[order], keep_f[order])
    loss = jnp.dot(jnp.where(keep, errors, 0.0)[order], weights)
    present = jnp.sum(fg * keep_f) > 0
    return jnp.where(present, loss, 0.0), present.astype(probs.dtype)

  losses, present = jax.vmap(per_class)(jnp.arange(num_classes))
  return jnp.sum(losses) / jnp.maximum(jnp.sum(present), 1.0)


class LovaszSoftmax:
  """'lovasz_softmax': the Lovasz-softmax loss over the classes present,
  over the whole (micro-)batch, or per image and averaged over the images
  with labelled pixels (`train.lovasz_per_image`). A batch-level term:
  micro-batches are averaged."""

  def denominator(self, labels, context):
    del labels, context
    return jnp.float32(1.0)

  def numerator(self, logits, labels, context):
    keep, safe = labelled(labels, context)
    probs = jax.nn.softmax(as_float(logits), axis=-1)
    c = context.num_classes
    if context.options.lovasz_per_image:
      per_image = jax.vmap(lambda p, l, k: lovasz_flat(
          p.reshape(-1, c), l.reshape(-1), k.reshape(-1), c))(
              probs, safe, keep)
      has_pixels = jnp.any(keep.reshape(keep.shape[0], -1), axis=1)
      count = jnp.sum(has_pixels.astype(jnp.float32))
      return jnp.sum(jnp.where(has_pixels, per_image, 0.0)) / jnp.maximum(
          count, 1.0)
    return lovasz_flat(probs.reshape(-1, c), safe.reshape(-1),
                       keep.reshape(-1), c)
