"""Checkpoints with orbax: the train state and the data iterator, atomically.

`<workdir>/checkpoints/<step>/` holds 'state' (step, parameters, BatchNorm
statistics, optimizer state, RNG key) and 'data' (the grain iterator state
of every process). Orbax writes each step into a temporary folder and renames
it when complete, so a run killed at any moment leaves the previous
checkpoints intact and the next run resumes from the newest complete one.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

import grain
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from deeplab_jax.errors import CheckpointError
from deeplab_jax.models import create_model
from deeplab_jax.weights.tree import flatten_state


class _IteratorState:
  """What grain's checkpoint handler saves: a recorded iterator state."""

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> Any:
    return self._state


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
                  _IteratorState(data_state))))
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
                     ) -> tuple[Any, int | None, list[str]]:
    """(state, step, notes): the newest checkpoint that restores, trying
    older ones when the newest is incomplete or unreadable (a run killed
    while saving, a disk that filled up). Raises the newest's error when
    none restores (e.g. the config changed)."""
    notes, first_error = [], None
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state, data_iterator), step, notes
      except CheckpointError as e:
        first_error = first_error or e
        reason = getattr(e, 'reason', None) or str(
            e.__cause__ or e).splitlines()[0][:200]
        notes.append(f'checkpoint {self.path(step)} is unusable ({reason})')
    if first_error is not None:
      raise first_error
    return None, None, notes

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> Any:
    """The train state at `step`; also rewinds `data_iterator` if given."""
    self._check_before_reading(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      raise CheckpointError(
          f'The checkpoint {self.path(step)} '
          f'{self._mismatch(step, abstract_state, e)}. Train in a new '
          '--workdir, or use the config it was trained with (config.json '
          'beside it).') from e
    return restored['state']

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
      reason = (f'incomplete: no {", ".join(missing)}; it was being '
                'written when its run stopped')
      error = CheckpointError(f'The checkpoint {self.path(step)} is {reason}.')
      error.reason = reason
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
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      raise CheckpointError(
          f'The checkpoint {self.path(step)} '
          f'{self._mismatch(step, abstract_weights, e)}. Use the config it '
          'was trained with (its workdir holds config.json).') from e

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
  optimizer and restores nothing else.

  Returns:
    (model in training mode, the step it was restored from).
  """
  if not (epath.Path(workdir) / 'checkpoints').is_dir():
    raise CheckpointError(
        f'No checkpoint in {epath.Path(workdir) / "checkpoints"}: train first '
        f'with --workdir={workdir}, or point --workdir at a training run.')
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(
          f'No checkpoint in {checkpointer.directory}: train first with '
          f'--workdir={workdir}, or point --workdir at a training run.')
    stride = output_stride or config.eval.output_stride
    abstract = nnx.eval_shape(lambda: create_model(config.model,
                                                   output_stride=stride))
    graphdef, params, batch_stats = nnx.split(abstract, nnx.Param,
                                              nnx.BatchStat)
    restored = checkpointer.restore_weights(
        step, {'params': params, 'batch_stats': batch_stats})
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
  raw = ocp.StandardCheckpointer().restore(step_dir / 'state')
  flat = {}
  for group in ('params', 'batch_stats'):
    for key, value in flatten_state(raw.get(group, {})).items():
      # Restored without a target, an nnx Variable is a {'value': array}.
      if key and key[-1] == 'value':
        key = key[:-1]
      flat[(group,) + key] = np.asarray(value)
  logging.info('init_from: read %d arrays from %s', len(flat), step_dir)
  return flat
