"""Weights as trees keyed by module path: flattening a model or a state,
and copying what matches into a model (`config.train.init_from`, the
weight importers, optimizer masks)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from deeplab_jax.errors import CheckpointError


def key_path(path) -> tuple[str, ...]:
  """('backbone', 'blocks', '0', ...) from a jax key path of an nnx.State."""
  keys = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      keys.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      keys.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.GetAttrKey) and entry.name != 'value':
      keys.append(entry.name)
  return tuple(keys)


def flatten_state(state: Any) -> dict[tuple[str, ...], Any]:
  """{key path: array} of an nnx.State or nested dict."""
  flat = {}
  jax.tree_util.tree_map_with_path(
      lambda p, x: flat.__setitem__(key_path(p), x), state)
  return flat


def module_weights(module: nnx.Module, prefix: tuple[str, ...] = ()
                   ) -> dict[tuple[str, ...], np.ndarray]:
  """{('params' | 'batch_stats',) + prefix + module path: array}, the form
  `copy_matching` takes."""
  out = {}
  for group, kind in (('params', nnx.Param), ('batch_stats', nnx.BatchStat)):
    for key, value in flatten_state(nnx.state(module, kind)).items():
      out[(group,) + prefix + key] = np.asarray(value)
  return out


def copy_matching(params: nnx.State, batch_stats: nnx.State,
                  weights: dict[tuple[str, ...], np.ndarray], *,
                  scope: str = 'model') -> tuple[nnx.State, nnx.State, dict]:
  """Copies weights whose path and shape match, within `scope`.

  scope 'backbone' copies only the backbone; 'model' copies everything whose
  shape fits (so a classifier for another number of classes keeps its
  initialisation).

  Returns:
    (params, batch_stats, report) where report counts 'loaded', 'skipped'
    (shape differs) and 'missing' (not in the weights) arrays.
  """
  report = {'loaded': 0, 'skipped': [], 'missing': []}

  def pick(group):
    def fn(path, value):
      key = key_path(path)
      if scope == 'backbone' and key[:1] != ('backbone',):
        return value
      source = weights.get((group,) + key)
      if source is None:
        report['missing'].append('/'.join(key))
        return value
      if tuple(source.shape) != tuple(value.shape):
        report['skipped'].append('/'.join(key))
        return value
      report['loaded'] += 1
      return jax.numpy.asarray(source, value.dtype)
    return fn

  params = jax.tree_util.tree_map_with_path(pick('params'), params)
  batch_stats = jax.tree_util.tree_map_with_path(pick('batch_stats'),
                                                 batch_stats)
  if report['loaded'] == 0:
    raise CheckpointError(
        'config.train.init_from: no array of the model matched the weights '
        f'(scope {scope!r}); is it a checkpoint of this model family?')
  return params, batch_stats, report
