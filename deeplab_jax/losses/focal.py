"""Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t) ** gamma,
so that well-classified pixels count less."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deeplab_jax.losses.base import as_float, labelled, pixel_weights


class Focal:
  """'focal': the mean over labelled pixels (weighted by
  `train.class_weights`, the paper's alpha) of -(1 - p_t) ** gamma *
  log p_t, gamma = `train.focal_gamma` (0: cross-entropy)."""

  def denominator(self, labels, context):
    return jnp.sum(pixel_weights(labels, context))

  def numerator(self, logits, labels, context):
    keep, safe = labelled(labels, context)
    log_p = jax.nn.log_softmax(as_float(logits), axis=-1)
    log_pt = jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    gamma = context.options.focal_gamma
    # (1 - p_t) ** gamma through exp/log1p: finite gradients at p_t = 1.
    modulating = jnp.exp(gamma * jnp.log1p(-jnp.exp(jnp.minimum(
        log_pt, -1e-7))))
    losses = jnp.where(keep, -modulating * log_pt, 0.0)
    return jnp.sum(losses * pixel_weights(labels, context))
