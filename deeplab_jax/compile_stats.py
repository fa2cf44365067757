"""Counts JAX compilations, so that "this compiled nothing new" can be
logged and tested.

jax.monitoring reports every lowering of a traced function to MLIR (an
in-memory jit cache miss, whether or not the persistent compilation cache
then spares the backend compile) and every backend compile's duration.
"""

from __future__ import annotations

import dataclasses
import threading

import jax

# jax._src.dispatch's event names (public through jax.monitoring).
LOWERING_EVENT = '/jax/core/compile/jaxpr_to_mlir_module_duration'
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'

_lock = threading.Lock()
_totals = {'lowerings': 0, 'compile_seconds': 0.0}


def _listener(event: str, duration: float, **kwargs) -> None:
  del kwargs
  with _lock:
    if event == LOWERING_EVENT:
      _totals['lowerings'] += 1
    elif event == BACKEND_COMPILE_EVENT:
      _totals['compile_seconds'] += duration


jax.monitoring.register_event_duration_secs_listener(_listener)


@dataclasses.dataclass
class CompileCounter:
  """`with CompileCounter() as c: ...`; then c.lowerings (functions traced
  and lowered anew) and c.compile_seconds (backend compile time)."""
  lowerings: int = 0
  compile_seconds: float = 0.0

  def __enter__(self) -> 'CompileCounter':
    with _lock:
      self._start = dict(_totals)
    return self

  def __exit__(self, *exc) -> None:
    with _lock:
      self.lowerings = _totals['lowerings'] - self._start['lowerings']
      self.compile_seconds = (_totals['compile_seconds'] -
                              self._start['compile_seconds'])
