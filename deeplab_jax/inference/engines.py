"""Which engine runs an inference program on the CPU: XLA or LiteRT.

On a CPU, LiteRT (XNNPACK) runs this model family faster than XLA:CPU (the
voc.py model at 513: about 53 against 71 ms a call on 2 cores). An
inference `Program` therefore starts in XLA and, under
`config.eval.cpu_runtime`:

  'auto'    once one input shape has spent `AUTO_AFTER_SECONDS` in XLA
            calls after its first, compiling one (a program that will keep
            running: converting takes a few seconds), converts the program
            with the current weights to TFLite in memory (the TFLite
            exporter's path: needs the TF extra), checks that its outputs
            equal XLA's on the same call (within `TOLERANCE`), times both
            and keeps the faster, saying so in one line. On a GPU or over
            several devices it stays XLA; without TensorFlow too, said once
            where it would have converted.
  'litert'  converts at every shape's first call and always runs LiteRT
            (ConfigError where it cannot).
  'xla'     always XLA.

New weights (the next checkpoint) convert again, keeping the choice made
for each shape. Training never comes here: it is XLA's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import distributed
from deeplab_jax.errors import ConfigError
from deeplab_jax.ops import tflite_graph

CPU_RUNTIMES = ('auto', 'xla', 'litert')

# XLA seconds (after the compiling call) one input shape runs before
# 'auto' converts it. Converting costs C (about 4.5 s with TensorFlow's
# import) and saves a share g of each call (about a third); waiting C / g
# of XLA calls before converting never costs more than twice the best
# choice in hindsight, however long the program runs (ski rental).
AUTO_AFTER_SECONDS = 15.0

# Largest |LiteRT - XLA| output difference accepted, relative to the
# largest |XLA output| (at least 1): float32 summation order, ~1e-5 here.
TOLERANCE = 1e-3


class LiteRTProgram:
  """A TFLite flatbuffer under LiteRT: (*arrays) -> tuple of float32
  arrays of `out_shapes` (a program with several outputs returns them
  flattened into one, split here)."""

  def __init__(self, flatbuffer: bytes, out_shapes: list[tuple[int, ...]]):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    self._interpreter = Interpreter(model_content=flatbuffer,
                                    num_threads=distributed.available_cores())
    self._interpreter.allocate_tensors()
    inputs = self._interpreter.get_input_details()
    if len(inputs) > 1:  # Named input_0, input_1, ... by the exporter.
      inputs = sorted(inputs, key=lambda d: int(
          d['name'].rsplit('input_', 1)[1].split(':')[0]))
    self._inputs = [d['index'] for d in inputs]
    self._output = self._interpreter.get_output_details()[0]['index']
    self._out_shapes = out_shapes

  def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for index, array in zip(self._inputs, arrays):
      self._interpreter.set_tensor(index, np.ascontiguousarray(array))
    self._interpreter.invoke()
    flat = self._interpreter.get_tensor(self._output)
    if len(self._out_shapes) == 1:
      return (flat.reshape(self._out_shapes[0]),)
    sizes = [int(np.prod(s)) for s in self._out_shapes]
    parts = np.split(flat.reshape(-1), np.cumsum(sizes)[:-1])
    return tuple(p.reshape(s) for p, s in zip(parts, self._out_shapes))


def convert(fn: Callable[..., tuple[Any, ...]], args: list[np.ndarray]
            ) -> LiteRTProgram:
  """`fn(*args)` (a tuple of float32 arrays; weights closed over as
  constants) as a LiteRT program for inputs shaped like `args`.

  Raises:
    MissingDependencyError: no TensorFlow to convert with.
  """
  specs = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
           for a in args]
  out_shapes = [tuple(o.shape) for o in jax.eval_shape(fn, *specs)]

  def one_output(*inputs):
    outputs = fn(*inputs)
    if len(outputs) == 1:
      return outputs[0]
    return jnp.concatenate([o.reshape(-1) for o in outputs])

  _, converter = tflite_graph.function_converter(one_output, specs)
  return LiteRTProgram(converter.convert(), out_shapes)


def unavailable(cpu_runtime: str) -> tuple[str | None, bool]:
  """(why LiteRT cannot run inference here, or None; whether that is
  worth saying: a missing TensorFlow is, a GPU is not). Cheap: nothing
  is imported.

  Raises:
    ConfigError: `cpu_runtime='litert'` where it cannot run.
  """
  reason, say = None, False
  if jax.default_backend() != 'cpu':
    reason = f'JAX runs on {jax.default_backend()}, LiteRT on the CPU'
  elif jax.device_count() > 1:
    reason = f'{jax.device_count()} devices share the batches'
  elif not all(importlib.util.find_spec(m) for m in ('tensorflow',
                                                       'ai_edge_litert')):
    reason, say = ('converting to LiteRT needs TensorFlow: pip install -r '
                   'requirements-tf.txt'), True
  if reason and cpu_runtime == 'litert':
    raise ConfigError(f"config.eval.cpu_runtime='litert' cannot run here "
                      f"({reason}): set it to 'auto' or 'xla'.")
  return reason, say


@dataclasses.dataclass
class _Shape:
  """What a Program knows of one input shape."""
  calls: int = 0
  xla_seconds: float = 0.0  # In calls after the first.
  choice: str | None = None  # 'xla' | 'litert' once chosen.
  litert: LiteRTProgram | None = None


class Program:
  """An inference program `fn(weights, *args) -> tuple of arrays`, run by
  XLA (`jitted`, fn under programs.jit) or LiteRT as
  `config.eval.cpu_runtime` says (the module docstring). Arguments that
  are None stay None (a different program)."""

  def __init__(self, fn: Callable[..., tuple[Any, ...]], jitted: Callable,
               cpu_runtime: str, *, name: str = 'inference',
               log: Callable[[str], None] | None = None):
    self._fn = fn
    self._jitted = jitted
    self._name = name
    self._log = log or (lambda line: print(line, flush=True))
    self._runtime = cpu_runtime
    self._unavailable, self._say = ((None, False) if cpu_runtime == 'xla'
                                    else unavailable(cpu_runtime))
    self._shapes: dict[tuple, _Shape] = {}
    self._weights = None
    self.choices: dict[str, str] = {}  # Shape -> engine, for reports.
    self._called = False

  @property
  def xla(self) -> Callable:
    """The jitted program (eval_shape, lowering)."""
    return self._jitted

  def __call__(self, weights: Any, *args: Any) -> tuple[Any, ...]:
    return self._call(weights, args, decide_now=False)

  def prepare(self, weights: Any, *args: Any) -> tuple[Any, ...]:
    """A call that, where LiteRT may run, chooses the engine for these
    shapes now rather than after AUTO_AFTER_SECONDS (benchmarks: their
    first call then holds the conversion)."""
    return self._call(weights, args, decide_now=True)

  def engine(self) -> str | None:
    """'XLA', 'LiteRT', or both with the shapes, for reports (None: never
    called)."""
    if not self._called:
      return None
    used = sorted(set(self.choices.values()))
    if not used or used == ['xla']:
      return 'XLA'
    if used == ['litert']:
      return 'LiteRT'
    return ', '.join(f'{k}: {v}' for k, v in self.choices.items())

  def _call(self, weights: Any, args: tuple, *, decide_now: bool
            ) -> tuple[Any, ...]:
    self._called = True
    if self._runtime == 'xla' or (self._unavailable and not self._say):
      return self._jitted(weights, *args)
    if weights is not self._weights:  # New weights: convert again.
      self._weights = weights
      for shape in self._shapes.values():
        shape.litert = None
    key = tuple(None if a is None else (tuple(a.shape), str(a.dtype))
                for a in args)
    shape = self._shapes.setdefault(key, _Shape())
    if shape.choice == 'xla':
      return self._jitted(weights, *args)
    if shape.choice == 'litert' and shape.litert is not None:
      return shape.litert(*[np.asarray(a) for a in args if a is not None])
    # XLA, timed while the choice is open (or converting again for new
    # weights, checked against this call's outputs).
    start = time.perf_counter()
    out = jax.block_until_ready(self._jitted(weights, *args))
    seconds = time.perf_counter() - start
    shape.calls += 1
    if shape.calls > 1:  # The first call compiles.
      shape.xla_seconds += seconds
    if (shape.choice is None and self._runtime == 'auto' and
        not decide_now and shape.xla_seconds < AUTO_AFTER_SECONDS):
      return out
    if self._unavailable:  # Said where a conversion would have come.
      self._log(f'CPU inference ({self._name}): XLA '
                f'({self._unavailable}).')
      self._runtime = 'xla'
      return out
    return self._decide(shape, key, weights, args, out)

  def _decide(self, shape: _Shape, key: tuple, weights: Any, args: tuple,
              xla_out: tuple) -> tuple[Any, ...]:
    """Converts for this shape and weights, checks against `xla_out` and,
    the first time, keeps the faster engine for the shape."""
    present = [np.asarray(a) for a in args if a is not None]
    slots = [a is not None for a in args]

    def closed(*inputs):
      it = iter(inputs)
      return self._fn(weights, *[next(it) if s else None for s in slots])

    label = ' '.join('x'.join(map(str, k[0])) for k in key if k is not None)
    start = time.perf_counter()
    try:
      program = convert(closed, present)
    except Exception as e:  # pylint: disable=broad-except
      if self._runtime == 'litert':
        raise ConfigError(f"config.eval.cpu_runtime='litert': the "
                          f'{self._name} program for {label} does not '
                          f'convert to TFLite ({e}).') from e
      return self._keep_xla(shape, label, f'no TFLite conversion: '
                            f'{type(e).__name__}', xla_out)
    converted = time.perf_counter() - start
    litert_out = program(*present)
    reference = [np.asarray(o, np.float32) for o in xla_out]
    error = max(float(np.max(np.abs(a - b))) if a.size else 0.0
                for a, b in zip(litert_out, reference))
    scale = max([1.0] + [float(np.max(np.abs(b))) for b in reference
                         if b.size])
    if not error <= TOLERANCE * scale:  # NaN differs too.
      if self._runtime == 'litert':
        raise ConfigError(
            f"config.eval.cpu_runtime='litert': LiteRT's {self._name} "
            f'outputs for {label} differ from XLA by {error:.2g}: set it to '
            "'xla'.")
      return self._keep_xla(shape, label, f'LiteRT differs by {error:.2g}',
                            xla_out)
    if shape.choice is None:
      litert_seconds = min(_seconds(program, present) for _ in range(3))
      # Timed apart from the call that brought us here (it may have
      # compiled).
      xla_seconds = min(_seconds(lambda: jax.block_until_ready(
          self._jitted(weights, *args)), ()) for _ in range(2))
      faster = (self._runtime == 'litert' or litert_seconds < xla_seconds)
      shape.choice = 'litert' if faster else 'xla'
      self.choices[label] = shape.choice
      self._log(
          f'CPU inference ({self._name}, {label}): LiteRT '
          f'{litert_seconds * 1e3:.1f} ms, XLA {xla_seconds * 1e3:.1f} ms '
          f'a call, outputs within {error:.1g} (converted in {converted:.1f}'
          f' s): {"LiteRT" if faster else "XLA"} from here on '
          "(config.eval.cpu_runtime='xla'|'litert' decides).")
    if shape.choice == 'litert':
      shape.litert = program
      return litert_out
    return xla_out

  def _keep_xla(self, shape: _Shape, label: str, why: str,
                xla_out: tuple) -> tuple[Any, ...]:
    shape.choice = 'xla'
    self.choices[label] = 'xla'
    self._log(f'CPU inference ({self._name}, {label}): XLA ({why}).')
    return xla_out


def _seconds(fn: Callable, args) -> float:
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start
