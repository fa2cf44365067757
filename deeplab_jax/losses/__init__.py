"""Training losses by name: `config.train.loss` is a list of (name,
weight) terms from `LOSSES`, summed with their weights.

Each term is an object with two functions of the batch (`LossTerm`):
`denominator(labels, ...)`, which depends on the labels only, and
`numerator(logits, labels, ...)`; the term's value is numerator /
denominator, both summed over a step's micro-batches
(`train.accumulate_steps`). A term that is a mean over pixels (cross-entropy,
focal) gives its pixel sum and its pixel count, so that accumulated
micro-batches give exactly the full batch's loss; a term over the whole
(micro-)batch (Dice, Lovasz-softmax per batch, hard-pixel mining) gives its
value and 1, so that micro-batches are averaged.

Adding a loss: a module here with a `LossTerm` and one line in `LOSSES`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deeplab_jax.losses.base import LossContext, LossTerm
from deeplab_jax.losses.cross_entropy import (CrossEntropy,
                                              softmax_cross_entropy)
from deeplab_jax.losses.dice import Dice
from deeplab_jax.losses.focal import Focal
from deeplab_jax.losses.lovasz import LovaszSoftmax
from deeplab_jax.registry import Registry

LOSSES: Registry[LossTerm] = Registry('loss', 'config.train.loss', {
    'cross_entropy': CrossEntropy(),
    'focal': Focal(),
    'dice': Dice(),
    'lovasz_softmax': LovaszSoftmax(),
})


class Terms(NamedTuple):
  """The (name, weight) terms of `config.train.loss`, looked up."""
  names: tuple[str, ...]
  weights: tuple[float, ...]
  terms: tuple[LossTerm, ...]


def as_terms(value: Any) -> tuple[tuple[str, float], ...] | None:
  """`config.train.loss` as ((name, weight), ...), or None if it is not
  one. Also taken: one name ('dice', weight 1) or one (name, weight) pair,
  which the command line gives for a one-term tuple without its comma."""
  def is_weight(w):
    return isinstance(w, (int, float)) and not isinstance(w, bool)
  if isinstance(value, str):
    return ((value, 1.0),)
  if (isinstance(value, (list, tuple)) and len(value) == 2 and
      isinstance(value[0], str) and is_weight(value[1])):
    return ((value[0], float(value[1])),)
  if not isinstance(value, (list, tuple)) or not value:
    return None
  terms = []
  for term in value:
    if isinstance(term, str):
      term = (term, 1.0)
    if not (isinstance(term, (list, tuple)) and len(term) == 2 and
            isinstance(term[0], str) and is_weight(term[1])):
      return None
    terms.append((term[0], float(term[1])))
  return tuple(terms)


def terms_of(loss_config: Any) -> Terms:
  """`config.train.loss` ([(name, weight), ...]) as registered terms."""
  pairs = as_terms(loss_config)
  if pairs is None:
    raise ValueError(f'config.train.loss = {loss_config!r} is not a list of '
                     '(name, weight) terms.')
  names = tuple(name for name, _ in pairs)
  return Terms(names, tuple(w for _, w in pairs),
               tuple(LOSSES.lookup(name) for name in names))


def denominators(terms: Terms, labels: jax.Array,
                 context: LossContext) -> jax.Array:
  """[terms] float32: each term's denominator for `labels`."""
  return jnp.stack([jnp.asarray(t.denominator(labels, context), jnp.float32)
                    for t in terms.terms])


def weighted_parts(terms: Terms, logits: jax.Array, labels: jax.Array,
                   context: LossContext, totals: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """(the loss this (micro-)batch adds: sum of weight * numerator / total
  denominator, [terms] each term's share unweighted)."""
  shares = jnp.stack([
      t.numerator(logits, labels, context) /
      jnp.maximum(total, 1e-5)
      for t, total in zip(terms.terms, totals)])
  return jnp.sum(jnp.asarray(terms.weights, jnp.float32) * shares), shares


__all__ = ['LOSSES', 'CrossEntropy', 'Dice', 'Focal', 'LossContext',
           'LossTerm', 'LovaszSoftmax', 'Terms', 'denominators',
           'as_terms', 'softmax_cross_entropy', 'terms_of', 'weighted_parts']
