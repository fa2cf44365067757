"""The checks `config.RULES` applies to values: each raises ConfigError
naming the key, the bad value and what is allowed."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from deeplab_jax.errors import ConfigError
from deeplab_jax.inference import policy
from deeplab_jax.models import backbones

DPC_OPS = ('conv', 'pyramid_pooling')

Check = Callable[[str, Any, Any], None]  # (key, value, config) -> None


def fail(key: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f'{key} = {value!r} is not allowed: {allowed}.')


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise fail(key, value, 'use one of ' + ', '.join(map(repr, allowed)))


def positive_int(key: str, value: Any, minimum: int = 1) -> None:
  if not _is_int(value) or value < minimum:
    raise fail(key, value, f'use an integer >= {minimum}')


def number_in(key: str, value: Any, lo: float, hi: float,
              lo_open: bool = False, hi_open: bool = False) -> None:
  ok = _is_number(value)
  if ok:
    ok = (value > lo if lo_open else value >= lo) and (
        value < hi if hi_open else value <= hi)
  if not ok:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    raise fail(key, value, f'use a number in {lb}{lo}, {hi}{rb}')


CHECKS = backbones.ConfigChecks(one_of=one_of, positive_int=positive_int,
                                number_in=number_in)


# Rule constructors for the table below. Bounds may be callables of the
# config, for limits that depend on another key.
def choice(allowed: Sequence[Any]) -> Check:
  return lambda key, value, config: one_of(key, value, allowed)


def registered(names: Callable[[], Sequence[str]]) -> Check:
  """One of the names a registry holds when the config is checked (so a
  part registered after import, by a test or a user's module, counts)."""
  return lambda key, value, config: one_of(key, value, tuple(names()))


def registered_list(names: Callable[[], Sequence[str]]) -> Check:
  """A non-empty list or tuple of registered names."""
  def check(key, value, config):
    del config
    if not isinstance(value, (list, tuple)) or not value:
      raise fail(key, value, 'use a non-empty list of '
                 + ', '.join(map(repr, names())))
    for name in value:
      one_of(key, name, tuple(names()))
  return check


def integer(minimum: int = 1) -> Check:
  return lambda key, value, config: positive_int(key, value, minimum)


def ranged(lo, hi, lo_open: bool = False, hi_open: bool = False) -> Check:
  bound = lambda b, config: b(config) if callable(b) else b
  return lambda key, value, config: number_in(
      key, value, bound(lo, config), bound(hi, config), lo_open, hi_open)


def optional(check: Check) -> Check:
  return lambda key, value, config: (None if value is None else
                                     check(key, value, config))


def int_tuple(example: str) -> Check:
  def check(key, value, config):
    del config
    if not isinstance(value, (list, tuple)) or not all(
        _is_int(r) and r >= 1 for r in value):
      raise fail(key, value, f'use a tuple of integers >= 1, {example}')
  return check


def scales(key: str, value: Any, config: Any) -> None:
  del config
  if (not isinstance(value, (list, tuple)) or not value or
      not all(_is_number(s) and 0 < s <= 8 for s in value)):
    raise fail(key, value,
                'use a non-empty tuple of scales in (0, 8], e.g. (1.0,)')


def num_classes(key: str, value: Any, config: Any) -> None:
  del config
  if not _is_int(value) or value == 1 or value < 0:
    raise fail(key, value, 'use 0 (the dataset\'s number of classes) or an '
                'integer >= 2')


def class_weights(key: str, value: Any, config: Any) -> None:
  if value is None or value == 'inverse_frequency':
    return
  if (not isinstance(value, (list, tuple)) or
      not all(_is_number(w) and w >= 0 for w in value) or
      not any(w > 0 for w in value)):
    raise fail(key, value, "use None, 'inverse_frequency' or a list of "
                'num_classes weights >= 0, e.g. [1.0, 5.0]')
  n = config.model.num_classes
  if n and len(value) != n:
    raise fail(key, value, f'give one weight per class: {n} '
                '(config.model.num_classes)')


def input_scale(key: str, value: Any, config: Any) -> None:
  del config
  try:
    policy.parse_input_scale(value)
  except (TypeError, ValueError):
    raise fail(key, value, "use 'native', 'fit' or a factor in (0, 16], "
                'e.g. 0.5') from None


def validate_dpc_branches(branches: Any,
                          key: str = 'config.model.head.dpc_branches') -> None:
  """Checks a Dense Prediction Cell spec (the seed's encoder_middle_conf)."""
  if not isinstance(branches, (list, tuple)) or not branches:
    raise fail(key, branches, 'give a non-empty list of branch dicts')
  required = {'kernel', 'rate', 'op', 'input'}
  for i, b in enumerate(branches):
    k = f'{key}[{i}]'
    if not isinstance(b, (Mapping, ml_collections.ConfigDict)):
      raise fail(k, b, 'each branch is a dict with keys kernel, rate, op, '
                  'input')
    missing = required - set(b.keys())
    if missing:
      raise ConfigError(f'{k} lacks {", ".join(sorted(missing))}: each branch '
                        'needs kernel, rate, op and input.')
    unknown = set(b.keys()) - required - {'grid_size'}
    if unknown:
      raise ConfigError(f'{k} has unknown keys {sorted(unknown)}: allowed are '
                        'kernel, rate, op, input, grid_size.')
    one_of(f'{k}.op', b['op'], DPC_OPS)
    if b['op'] == 'conv':
      one_of(f'{k}.kernel', b['kernel'], (1, 3))
    rate = b['rate']
    if (not isinstance(rate, (list, tuple)) or len(rate) != 2 or
        not all(_is_int(r) and r >= 1 for r in rate)):
      raise fail(f'{k}.rate', rate, 'use [rate_h, rate_w], two integers >= 1')
    inp = b['input']
    if not _is_int(inp) or inp < -1 or inp >= i:
      raise fail(
          f'{k}.input', inp,
          f'use -1 (backbone features) or the index of an earlier branch '
          f'(0..{i - 1}); a branch cannot read itself or a later branch'
          if i else 'the first branch must read the backbone features (-1)')
    if b['op'] == 'pyramid_pooling':
      grid = b.get('grid_size')
      if (not isinstance(grid, (list, tuple)) or len(grid) != 2 or
          not all(_is_int(g) and g >= 1 for g in grid)):
        raise fail(f'{k}.grid_size', grid,
                    'pyramid_pooling needs grid_size [h, w] of integers >= 1')
