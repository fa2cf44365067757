"""What a loss term sees: the logits and labels of a (micro-)batch and
the `LossContext` of the run."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossContext:
  """Per-run facts a term may use.

  Attributes:
    ignore_label: labels never trained on.
    num_classes: C.
    class_weights: None, or [C] float32 per-class weights.
    step: the optimizer step (a traced int32), for annealed options.
    options: `config.train` (each term reads its own keys).
  """
  ignore_label: int
  num_classes: int
  class_weights: Any = None
  step: Any = 0
  options: Any = None


class LossTerm(Protocol):
  """numerator / denominator is the term's value (see the package)."""

  def denominator(self, labels: jax.Array, context: LossContext
                  ) -> jax.Array:
    """From the labels alone ([N, H, W] int class ids)."""

  def numerator(self, logits: jax.Array, labels: jax.Array,
                context: LossContext) -> jax.Array:
    """From [N, H, W, C] float logits at the label resolution."""


def as_float(logits: jax.Array) -> jax.Array:
  """Logits in float32 at least (bfloat16 ones are promoted; float64, as
  the gradient checks use, stays)."""
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def labelled(labels: jax.Array, context: LossContext
             ) -> tuple[jax.Array, jax.Array]:
  """(bool [N, H, W] labelled pixels, labels with ignored ones set to 0)."""
  labels = labels.astype(jnp.int32)
  keep = labels != context.ignore_label
  return keep, jnp.where(keep, labels, 0)


def pixel_weights(labels: jax.Array, context: LossContext) -> jax.Array:
  """[N, H, W] float32: each labelled pixel's class weight (1 without
  class weights), 0 for ignored ones."""
  keep, safe = labelled(labels, context)
  if context.class_weights is None:
    return keep.astype(jnp.float32)
  weights = jnp.asarray(context.class_weights, jnp.float32)[safe]
  return jnp.where(keep, weights, 0.0)
