"""Works around a quadratic cost in tracing a model's construction.

nnx's `Variable.set_value` probes `getattr(value, 'sharding', None)` at
every assignment, and every random draw of an initialiser assigns its RNG
stream's count. On a tracer (inside `nnx.eval_shape`, or a jitted
constructor) that probe raises AttributeError, and jax <= 0.10 builds the
error's message by walking every equation traced so far to say where the
tracer came from: tracing a model's construction cost time quadratic in its
layers (`nnx.eval_shape` of DeepLab on Xception-65: 2.7 s, 0.57 s with the
message left out). jax-ml/jax#40041 removes that part of the message
upstream.

`quick_sharding_probe()` makes the probe's AttributeError go without the
origin message while a model is built; the attribute is missing as before
(hasattr and getattr behave the same), and every other error keeps its
message.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator, TypeVar

import jax
from flax import nnx

_LOCK = threading.RLock()
_DEPTH = 0
F = TypeVar('F', bound=Callable[..., Any])


def _sharding_unavailable(self: Any) -> Any:
  raise AttributeError(
      f"The 'sharding' attribute is not available on a traced value "
      f'({type(self).__name__}).')


@contextlib.contextmanager
def quick_sharding_probe() -> Iterator[None]:
  """Within: `tracer.sharding` raises AttributeError in O(1). Nests, and
  restores jax's own property on exit."""
  global _DEPTH
  tracer = jax.core.Tracer
  original = tracer.__dict__.get('sharding')
  if not isinstance(original, property):  # A jax we do not know: leave it.
    yield
    return
  with _LOCK:
    if _DEPTH == 0:
      tracer.sharding = property(_sharding_unavailable)
    _DEPTH += 1
  try:
    yield
  finally:
    with _LOCK:
      _DEPTH -= 1
      if _DEPTH == 0:
        tracer.sharding = original


def with_quick_sharding_probe(build: F) -> F:
  """`build` (a model constructor) run under `quick_sharding_probe()`."""

  @functools.wraps(build)
  def wrapper(*args, **kwargs):
    with quick_sharding_probe():
      return build(*args, **kwargs)
  return wrapper  # type: ignore[return-value]


def abstract(build: Callable[[], Any]) -> Any:
  """nnx.eval_shape(build) under `quick_sharding_probe()`: the module
  `build` makes, shapes only (for constructors other than create_model,
  which has the probe already)."""
  return nnx.eval_shape(with_quick_sharding_probe(build))
