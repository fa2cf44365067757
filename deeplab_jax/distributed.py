"""Data parallelism with `jax.sharding`: one mesh axis 'data' over every
device of every process; batches sharded on it, parameters replicated."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deeplab_jax.errors import ConfigError

DATA_AXIS = 'data'


def available_cores() -> int:
  """CPU cores this process may run on (its affinity: a scheduler's
  allocation, not the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize` for several hosts (no-op when not asked).

  With no arguments JAX detects the cluster (SLURM, Cloud TPU, ...). CPU
  devices talk through gloo (this setting does not affect accelerators, and
  must be made before any JAX computation, like the initialisation itself).
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices (or `devices`), axis 'data'.

  The axis is `Auto`: the step is plain data parallelism that XLA
  partitions from the input shardings (newer JAX versions default
  `jax.make_mesh` to explicit axes, which would ask every gather in the
  loss for an output sharding).
  """
  auto = (jax.sharding.AxisType.Auto,)
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                         axis_types=auto)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=auto)


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of the global batch; ConfigError if it does not
  split evenly over the devices."""
  devices = mesh.devices.size
  processes = jax.process_count()
  if global_batch_size % devices:
    raise ConfigError(
        f'config.train.batch_size = {global_batch_size} does not divide over '
        f'the {devices} devices ({processes} process(es) x '
        f'{jax.local_device_count()} local devices): use a multiple of '
        f'{devices}, e.g. {devices * max(1, global_batch_size // devices)}.')
  return global_batch_size // processes


def to_global(batch: dict[str, np.ndarray],
              sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of the batch -> one global, sharded jax.Array."""
  return {
      key: jax.make_array_from_process_local_data(sharding, value)
      for key, value in batch.items()
  }


class Prefetcher:
  """Moves the next batches to the devices in a background thread.

  Each item is (global batch, data-iterator state after that batch), so a
  checkpoint records exactly the batches the training loop has consumed,
  not the ones waiting in this buffer.
  """

  def __init__(self, iterator: Iterator[Any],
               to_device: Callable[[Any], Any], size: int = 2):
    self._iterator = iterator
    self._to_device = to_device
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self._iterator)
        state = self._iterator.get_state()
        self._put((self._to_device(batch), state))
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
    close_iterator(self._iterator)


def close_iterator(iterator: Any) -> None:
  """Stops a grain iterator's worker processes and frees their buffers."""
  inner = getattr(iterator, '_iterator', iterator)  # DataLoaderIterator.
  close = getattr(inner, 'close', None)
  if callable(close):
    close()
