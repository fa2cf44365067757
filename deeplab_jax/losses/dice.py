"""Soft Dice loss, multi-class (Milletari et al. 2016; Sudre et al. 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deeplab_jax.losses.base import as_float, labelled


class Dice:
  """'dice': 1 - the mean over the classes present in the (micro-)batch's
  labels of (2 sum p y + s) / (sum p + sum y + s), p the softmax
  probabilities, y the one-hot labels, over labelled pixels only, s =
  `train.dice_smooth`. A batch-level term: micro-batches are averaged."""

  def denominator(self, labels, context):
    del labels, context
    return jnp.float32(1.0)

  def numerator(self, logits, labels, context):
    keep, safe = labelled(labels, context)
    mask = keep[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(as_float(logits), axis=-1) * mask
    onehot = jax.nn.one_hot(safe, context.num_classes) * mask
    axes = tuple(range(probs.ndim - 1))
    intersection = jnp.sum(probs * onehot, axis=axes)
    sizes = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    smooth = context.options.dice_smooth
    dice = (2.0 * intersection + smooth) / (sizes + smooth)
    present = jnp.sum(onehot, axis=axes) > 0
    count = jnp.sum(present.astype(jnp.float32))
    return jnp.where(count > 0, jnp.sum(jnp.where(present, 1.0 - dice, 0.0))
                     / jnp.maximum(count, 1.0), 0.0)
