"""Parameter counts per module, for `main.py --mode=summary` and notebooks."""

from __future__ import annotations

import collections

import numpy as np
from flax import nnx


def parameter_counts(module: nnx.Module, depth: int = 1
                     ) -> 'collections.OrderedDict[str, dict[str, int]]':
  """{module path: {'params': n, 'batch_stats': n}} grouped at `depth`.

  Paths are dotted attribute names (e.g. 'backbone', 'head.aspp0' at depth
  2); counts are numbers of scalars.
  """
  counts: collections.OrderedDict[str, dict[str, int]] = (
      collections.OrderedDict())
  for path, variable in nnx.to_flat_state(nnx.state(module)):
    if isinstance(variable, nnx.Param):
      kind = 'params'
    elif isinstance(variable, nnx.BatchStat):
      kind = 'batch_stats'
    else:
      continue
    name = '.'.join(str(p) for p in path[:depth])
    entry = counts.setdefault(name, {'params': 0, 'batch_stats': 0})
    entry[kind] += int(np.prod(variable.shape))
  return counts


def format_summary(module: nnx.Module, depth: int = 1) -> str:
  """A table of parameter and BatchNorm-statistic counts per module."""
  counts = parameter_counts(module, depth)
  width = max([len(k) for k in counts] + [6])
  lines = [f'{"module":<{width}}  {"params":>12}  {"bn stats":>10}  '
           f'{"total":>12}']
  total = {'params': 0, 'batch_stats': 0}
  for name, c in counts.items():
    lines.append(f'{name:<{width}}  {c["params"]:>12,}  '
                 f'{c["batch_stats"]:>10,}  '
                 f'{c["params"] + c["batch_stats"]:>12,}')
    for k in total:
      total[k] += c[k]
  lines.append(f'{"total":<{width}}  {total["params"]:>12,}  '
               f'{total["batch_stats"]:>10,}  '
               f'{total["params"] + total["batch_stats"]:>12,}')
  return '\n'.join(lines)
