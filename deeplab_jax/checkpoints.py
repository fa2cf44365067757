"""Checkpoints with orbax: the train state and the data iterator, atomically.

`<workdir>/checkpoints/<step>/` holds 'state' (step, parameters, BatchNorm
statistics, optimizer state, RNG key), 'data' (the grain iterator state
of every process) and 'meta' (the devices and processes that wrote it).
Orbax writes each step into a temporary folder and renames it when
complete, so a run killed at any moment leaves the previous checkpoints
intact and the next run resumes from the newest complete one. A step found
damaged later (a deleted or truncated file) is moved aside to
`<workdir>/checkpoints_unusable/`, so that training writes it again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from deeplab_jax.errors import CheckpointError
from deeplab_jax.models import create_model
from deeplab_jax.weights.tree import flatten_state


class _IteratorState:
  """What grain's checkpoint handler saves: a recorded iterator state."""

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> Any:
    return self._state


def topology() -> dict[str, int]:
  """The devices and processes of this run, saved with each step."""
  return {'devices': jax.device_count(), 'processes': jax.process_count()}


class Restored(NamedTuple):
  """What `Checkpointer.restore_newest` found: the state and its step (None
  when no checkpoint restored), what it said, whether the data iterator's
  position carried over, and the devices and processes that wrote it."""
  state: Any
  step: int | None
  notes: list[str]
  data_restored: bool
  written_on: dict[str, int] | None


def checkpoint_dir(path: str | os.PathLike) -> epath.Path:
  """`path/checkpoints` for a workdir, `path` itself otherwise."""
  path = epath.Path(path)
  return path / 'checkpoints' if (path / 'checkpoints').is_dir() else path


class Checkpointer:
  """Saves and restores (train state, data iterator state) by step."""

  def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3,
               read_only: bool = False):
    self.directory = epath.Path(os.path.abspath(workdir)) / 'checkpoints'
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0,
          max_to_keep=None, enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            'state': ocp.StandardCheckpointHandler(),
            'data': grain.checkpoint.CheckpointHandler(),
            'meta': ocp.JsonCheckpointHandler(),
        })

  def latest_step(self) -> int | None:
    self._manager.reload()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return list(self._manager.all_steps())

  def path(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts an (asynchronous) save; `wait` makes it durable."""
    with self._disk_errors(step):
      self._manager.save(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=grain.checkpoint.CheckpointSave(
                  _IteratorState(data_state)),
              meta=ocp.args.JsonSave(topology())))
    self._saving = step

  def wait(self) -> None:
    with self._disk_errors(getattr(self, '_saving', None)):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _disk_errors(self, step: int | None):
    """A full disk (or a quota) while writing becomes one message that says
    the previous checkpoint survived (orbax finalises a step only once it
    is complete)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      cause = e
      while cause is not None and not (
          isinstance(cause, OSError) and cause.errno in (errno.ENOSPC,
                                                         errno.EDQUOT)):
        cause = cause.__cause__ or cause.__context__
      if cause is None:
        raise
      complete = [s for s in self.all_steps() if s != step]
      kept = (f'checkpoint step {max(complete)} in {self.directory} is '
              'intact' if complete else 'no earlier checkpoint exists')
      raise CheckpointError(
          f'The disk is full: writing checkpoint step {step} to '
          f'{self.directory} failed ({cause.strerror}); {kept}. Free space '
          '(or lower config.train.keep_checkpoints) and run again: it '
          'resumes from there.') from None

  def restore_newest(self, abstract_state: Any, data_iterator: Any
                     ) -> 'Restored':
    """The newest checkpoint that restores, trying older ones when the
    newest is damaged (incomplete, unreadable). Damaged steps newer than
    the one restored are moved aside (`move_aside`), so that training
    writes them again; a step that does not fit the config stops with its
    error (nothing is moved: it is the config that differs).

    The state is restored onto `abstract_state`'s shardings (this run's
    devices, whatever wrote it); the data position carries over when the
    process count is the same (`data_restored`).
    """
    notes, damaged = [], []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, carried = self.restore(step, abstract_state, data_iterator)
      except CheckpointError as e:
        if not getattr(e, 'damaged', False):
          raise
        damaged.append((step, e.reason))
        continue
      notes += [self.move_aside(s, why) for s, why in damaged]
      return Restored(state, step, notes, carried, self.topology(step))
    notes += [self.move_aside(s, why) for s, why in damaged]
    return Restored(None, None, notes, False, None)

  def move_aside(self, step: int, reason: str) -> str:
    """Moves damaged `step` out of the checkpoints folder (to
    `<workdir>/checkpoints_unusable/<step>`, numbered if taken) and says
    where; process 0 moves, every process waits for it."""
    target = self.directory.parent / 'checkpoints_unusable' / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      suffix = 1
      while target.exists():
        target = target.parent / f'{step}.{suffix}'
        suffix += 1
      os.rename(self.path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'move_aside_{step}')
    self._manager.reload()
    return (f'checkpoint {self.path(step)} is unusable ({reason}): moved '
            f'aside to {target}, so that step {step} is written again')

  def topology(self, step: int) -> dict[str, int] | None:
    """{'devices', 'processes'} that wrote `step` (None when unknown): from
    its 'meta' item, or for older steps the processes from the data item's
    file names."""
    meta = self.path(step) / 'meta' / 'metadata'
    if meta.exists():
      try:
        return json.loads(meta.read_text())
      except ValueError:
        return None
    files = list((self.path(step) / 'data').glob('process_*-of-*.json'))
    if files:
      return {'processes': int(files[0].stem.rsplit('-of-', 1)[1])}
    return None

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> tuple[Any, bool]:
    """(the train state at `step`, whether `data_iterator` was rewound to
    its position).

    The data position carries over when the process count is the one that
    wrote it and the dataset is the same; otherwise it is said, and the
    caller starts a new order (the state is what must not be lost).
    """
    self._check_before_reading(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, TypeError, FileNotFoundError, OSError,
            RuntimeError) as e:
      differences = self._differences(step, abstract_state)
      if differences:
        raise CheckpointError(
            f'The checkpoint {self.path(step)} does not fit this config: '
            f'{differences}. Train in a new --workdir, or use the config it '
            'was trained with (config.json beside it).') from None
      first = str(e).strip().splitlines()[0][:200] if str(e) else ''
      error = CheckpointError(
          f'The checkpoint {self.path(step)} is unreadable '
          f'({type(e).__name__}: {first}).')
      error.damaged, error.reason = True, f'unreadable: {first}'
      raise error from None
    if data_iterator is None:
      return restored['state'], False
    written = self.topology(step)
    if written is not None and written.get('processes') != jax.process_count():
      return restored['state'], False
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except (ValueError, KeyError, TypeError, FileNotFoundError, OSError) as e:
      first = str(e).strip().splitlines()[0][:200] if str(e) else ''
      message = (f'The data position of {self.path(step)} cannot be '
                 f'restored ({type(e).__name__}: {first}): training '
                 f'continues from step {step} with a new data order.')
      logging.warning('%s', message)
      print(message, flush=True)
      return restored['state'], False
    return restored['state'], True

  def has_ema(self, step: int) -> bool:
    """Whether `step` holds an exponential moving average of the weights
    (`train.ema_decay`)."""
    try:
      stored = ocp.PyTreeCheckpointer().metadata(
          self.path(step) / 'state').item_metadata.tree
    except Exception:  # pylint: disable=broad-except
      return False
    return bool(stored.get('ema')) if isinstance(stored, dict) else False

  def verify(self, step: int) -> None:
    """CheckpointError unless `step` is saved and complete: a run reports
    success only with its newest checkpoint usable."""
    self.wait()
    if step not in self.all_steps() or self._missing_files(step):
      missing = self._missing_files(step) if step in self.all_steps() else []
      raise CheckpointError(
          f'The checkpoint of step {step} ({self.path(step)}) was not written '
          'completely' + (f' (no {", ".join(missing)})' if missing else '') +
          ': run the same command again to write it (the newest usable '
          'checkpoint is kept).')

  def _check_before_reading(self, step: int, abstract_state: Any, *,
                            partial: bool = False) -> None:
    """Raises a CheckpointError when `step` is incomplete or its stored
    shapes do not fit `abstract_state` (only the arrays it names, if
    `partial`).

    Checked from the files and the metadata before orbax reads an array:
    its failed reads (a half-written step, another head width) each left
    a pending TensorStore read that printed an "Event loop is closed"
    traceback at exit, 20-60 of them after the one message.
    """
    missing = self._missing_files(step)
    if missing:
      reason = f'incomplete: no {", ".join(missing)}'
      error = CheckpointError(f'The checkpoint {self.path(step)} is {reason}.')
      error.damaged, error.reason = True, reason
      raise error
    differences = self._differences(step, abstract_state, partial=partial)
    if differences:
      raise CheckpointError(
          f'The checkpoint {self.path(step)} does not fit this config: '
          f'{differences}. Train in a new --workdir, or use the config it '
          'was trained with (config.json beside it).')

  def _missing_files(self, step: int) -> list[str]:
    """What a complete step written by `save` has and `step` lacks: the
    state item's OCDBT manifest and data folder, the data item."""
    path = self.path(step)
    wanted = ('state/_METADATA', 'state/manifest.ocdbt', 'state/d', 'data')
    return [name for name in wanted if not (path / name).exists()]

  def _differences(self, step: int, abstract_state: Any, *,
                   partial: bool = False) -> str | None:
    """The first keys whose stored shapes differ from `abstract_state`'s or
    that only one side has (rather than orbax's whole metadata tree); None
    when they agree or the metadata cannot be read. With `partial`, the
    checkpoint's other top-level items (e.g. the optimizer state beside
    'params' and 'batch_stats') are expected."""
    try:
      stored = ocp.PyTreeCheckpointer().metadata(
          self.path(step) / 'state').item_metadata.tree
    except Exception:  # pylint: disable=broad-except
      return None
    saved = {k: tuple(getattr(v, 'shape', ()) or ())
             for k, v in flatten_state(stored).items()}
    saved = {(k[:-1] if k and k[-1] == 'value' else k): v
             for k, v in saved.items()}
    wanted = {k: tuple(v.shape) for k, v in
              flatten_state(abstract_state).items()}
    shape = [f'{"/".join(k)} {saved[k]} vs {wanted[k]} here'
             for k in wanted if k in saved and saved[k] != wanted[k]]
    only_here = ['/'.join(k) for k in wanted if k not in saved]
    groups = {k[0] for k in wanted if k}
    only_there = ['/'.join(k) for k in saved if k not in wanted and (
        not partial or k[:1] and k[0] in groups)]
    parts = []
    if shape:
      parts.append(f'shapes differ ({len(shape)}): ' + '; '.join(shape[:3]))
    if only_here:
      parts.append(f'this config has {len(only_here)} arrays it lacks, e.g. '
                   + ', '.join(only_here[:3]))
    if only_there:
      parts.append(f'it has {len(only_there)} arrays this config lacks, e.g. '
                   + ', '.join(only_there[:3]))
    return '; '.join(parts) or None

  def _mismatch(self, step: int, abstract_state: Any,
                error: Exception) -> str:
    """What differs, for an error orbax raised while restoring."""
    differences = self._differences(step, abstract_state)
    if differences:
      return 'does not fit this config: ' + differences
    first = str(error).strip().splitlines()[0][:200] if str(error) else ''
    return f'is incomplete or unreadable ({type(error).__name__}: {first})'

  def restore_weights(self, step: int, abstract_weights: dict[str, Any]
                      ) -> dict[str, Any]:
    """Only the items of `abstract_weights` (e.g. 'params' and
    'batch_stats') of the train state at `step`: an orbax partial restore
    that reads neither the optimizer state nor the data iterator."""
    self._check_before_reading(step, abstract_weights, partial=True)
    path = self.path(step) / 'state'
    try:
      return ocp.PyTreeCheckpointer().restore(
          path, args=ocp.args.PyTreeRestore(
              item=abstract_weights,
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  abstract_weights),
              partial_restore=True))
    except (ValueError, KeyError, TypeError, FileNotFoundError, OSError,
            RuntimeError) as e:
      error = CheckpointError(
          f'The checkpoint {self.path(step)} '
          f'{self._mismatch(step, abstract_weights, e)}. Use the config it '
          'was trained with (its workdir holds config.json).')
      if not self._differences(step, abstract_weights, partial=True):
        first = str(e).strip().splitlines()[0][:200] if str(e) else ''
        error.damaged, error.reason = True, f'unreadable: {first}'
      raise error from None

  def close(self) -> None:
    self.wait()
    self._manager.close()


def restore_model(config: Any, workdir: str | os.PathLike, *,
                  step: int | None = None,
                  output_stride: int | None = None
                  ) -> tuple[nnx.Module, int]:
  """The model `config.model` describes, built for `output_stride` (default
  `config.eval.output_stride`), holding the parameters and BatchNorm
  statistics of checkpoint `step` (default: the newest) of `workdir`.

  The one model loader of eval, predict and `--follow`: it builds no
  optimizer and restores nothing else. Without `step`, a damaged newest
  step is named and skipped for the newest usable one.

  Returns:
    (model in training mode, the step it was restored from).
  """
  if not (epath.Path(workdir) / 'checkpoints').is_dir():
    raise CheckpointError(
        f'No checkpoint in {epath.Path(workdir) / "checkpoints"}: train first '
        f'with --workdir={workdir}, or point --workdir at a training run.')
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    steps = (sorted(checkpointer.all_steps(), reverse=True) if step is None
             else [step])
    if not steps:
      raise CheckpointError(
          f'No checkpoint in {checkpointer.directory}: train first with '
          f'--workdir={workdir}, or point --workdir at a training run.')
    stride = output_stride or config.eval.output_stride
    abstract = nnx.eval_shape(lambda: create_model(config.model,
                                                   output_stride=stride))
    graphdef, params, batch_stats = nnx.split(abstract, nnx.Param,
                                              nnx.BatchStat)
    for index, step in enumerate(steps):
      try:
        use_ema = (config.eval.weights == 'ema' and
                   checkpointer.has_ema(step))
        wanted = {'params': params, 'batch_stats': batch_stats}
        restored = checkpointer.restore_weights(
            step, {'ema': wanted} if use_ema else wanted)
        if use_ema:
          restored = restored['ema']
          print(f'Using the EMA weights of step {step} '
                '(config.eval.weights=ema; the raw ones: '
                '--config.eval.weights=raw).', flush=True)
        break
      except CheckpointError as e:
        if not getattr(e, 'damaged', False) or index + 1 == len(steps):
          raise
        print(f'Skipping checkpoint {checkpointer.path(step)}: it is '
              f'{e.reason}; using step {steps[index + 1]}.', flush=True)
  finally:
    checkpointer.close()
  bad = ['/'.join(key) for key, value in flatten_state(restored).items()
         if np.issubdtype(np.asarray(value).dtype, np.inexact)
         and not np.all(np.isfinite(np.asarray(value)))]
  if bad:
    raise CheckpointError(
        f'The checkpoint {checkpointer.path(step)} holds non-finite values '
        f'({len(bad)} arrays, e.g. {bad[0]}): it cannot be evaluated. Use an '
        'earlier step (its checkpoints/ folder lists them) or train again '
        'with a lower learning rate.')
  return nnx.merge(graphdef, restored['params'], restored['batch_stats']), step


def read_weights(path: str | os.PathLike) -> dict[tuple[str, ...], np.ndarray]:
  """Parameters and BatchNorm statistics of the newest checkpoint under
  `path` (a workdir, its checkpoints/ folder, or one step's folder), keyed
  ('params' | 'batch_stats', module path...)."""
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointError(f'config.train.init_from: {path} does not exist.')
  step_dir = path
  if not (path / 'state').is_dir():
    directory = checkpoint_dir(path)
    steps = sorted(int(p.name) for p in directory.iterdir()
                   if p.name.isdigit() and (p / 'state').is_dir())
    if not steps:
      raise CheckpointError(
          f'config.train.init_from: no checkpoint under {path} (expected '
          '<workdir>/checkpoints/<step>/state).')
    step_dir = directory / str(steps[-1])
  # As host arrays: any device count may have written it.
  metadata = ocp.PyTreeCheckpointer().metadata(
      step_dir / 'state').item_metadata.tree
  raw = ocp.PyTreeCheckpointer().restore(
      step_dir / 'state', args=ocp.args.PyTreeRestore(
          restore_args=jax.tree.map(
              lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)))
  flat = {}
  for group in ('params', 'batch_stats'):
    for key, value in flatten_state(raw.get(group, {})).items():
      # Restored without a target, an nnx Variable is a {'value': array}.
      if key and key[-1] == 'value':
        key = key[:-1]
      flat[(group,) + key] = np.asarray(value)
  logging.info('init_from: read %d arrays from %s', len(flat), step_dir)
  return flat
