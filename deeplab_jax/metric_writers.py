"""Training and evaluation metrics to the log and the chosen backends
(`config.train.writers`, from `WRITERS`): TensorBoard, Weights & Biases.

TensorBoard event files are written with tensorboardX, which needs no
TensorFlow (clu's writer imports TensorFlow, 1.3 GB of it, for this alone);
`tensorboard --logdir runs` reads them. Weights & Biases is an optional
extra (`pip install ".[wandb]"`); `WANDB_MODE=offline` keeps its run in a
local folder. Only process 0 writes; every process logs.

Adding a backend: a class with write_scalars(step, scalars),
write_hparams(hparams), flush() and close(), built as cls(logdir, name), and
one line in `WRITERS`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from deeplab_jax.errors import ConfigError, MissingDependencyError
from deeplab_jax.registry import Registry


class TensorBoardWriter:
  """Event files in `logdir` (tensorboardX)."""

  def __init__(self, logdir: str, name: str | None = None):
    del name
    # Imported here so that reading a config does not load tensorboardX
    # (the data pipeline runs in workers with a minimal import set).
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, value, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's config as hyper-parameters (the HPARAMS tab)."""
    from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
    experiment, start, end = hparams_summary(dict(hparams), {})
    for summary in (experiment, start, end):
      self._writer.file_writer.add_summary(summary)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class WandbWriter:
  """A Weights & Biases run, its files in `logdir/wandb`; a resumed training
  goes on in the same run (its id is kept in `logdir/wandb_run_id`)."""

  def __init__(self, logdir: str, name: str | None = None):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise MissingDependencyError(
          "config.train.writers names 'wandb', an optional extra: run "
          'pip install ".[wandb]" in the repository (or pip install '
          'wandb).') from None
    self._wandb = wandb
    run_id = _wandb_run_id(logdir, name)
    try:
      self._run = wandb.init(
          dir=logdir, id=run_id, name=name, resume='allow',
          project=os.environ.get('WANDB_PROJECT', 'deeplab_jax'),
          settings=wandb.Settings(console='off', silent=True))
    except wandb.errors.Error as e:
      raise ConfigError(
          f'Weights & Biases cannot start a run ({e}): log in with `wandb '
          'login`, or set WANDB_MODE=offline to keep the run in '
          f'{os.path.join(logdir, "wandb")} (`wandb sync` uploads it '
          'later).') from None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._run.log(dict(scalars), step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self) -> None:
    pass  # wandb sends (or, offline, writes) as it logs.

  def close(self) -> None:
    self._run.finish()


def _wandb_run_id(logdir: str, name: str | None) -> str:
  """The run id kept in the workdir: two workdirs of one name never share a
  run, and a workdir moved to another machine resumes its own."""
  path = os.path.join(logdir, 'wandb_run_id')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return f.read().strip()
  stem = ''.join(c if c.isalnum() or c in '-_' else '_'
                 for c in (name or os.path.basename(os.path.abspath(logdir))))
  run_id = f'{stem[:48]}-{uuid.uuid4().hex[:8]}'
  with open(path, 'w', encoding='utf-8') as f:
    f.write(run_id + '\n')
  return run_id


WRITERS = Registry('metric writer', 'config.train.writers', {
    'tensorboard': TensorBoardWriter,
    'wandb': WandbWriter,
})


class MetricWriter:
  """write_scalars / write_hparams / flush / close to the log and every
  backend of `writers`, like clu's MetricWriter.

  Args:
    logdir: the folder of the backends' files (created).
    just_logging: only log (processes other than 0).
    writers: names of `WRITERS`.
    name: the run's name for backends that show one (W&B).
  """

  def __init__(self, logdir: str | os.PathLike, *,
               just_logging: bool = False,
               writers: Sequence[str] = ('tensorboard',),
               name: str | None = None):
    self.logdir = str(logdir)
    self._writers = []
    if not just_logging:
      os.makedirs(self.logdir, exist_ok=True)
      self._writers = [WRITERS.lookup(w)(self.logdir, name) for w in writers]

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={v:.6g}' for k, v in scalars.items()))
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()
    self._writers = []


class ProgressReport:
  """Every `every_steps`: logs steps/s and the ETA, and writes steps/s."""

  def __init__(self, *, num_train_steps: int, writer: MetricWriter,
               every_steps: int, first_step: int):
    self.num_train_steps = num_train_steps
    self.writer = writer
    self.every_steps = every_steps
    self._last = (first_step, time.perf_counter())

  def __call__(self, step: int) -> None:
    if step % self.every_steps and step != self.num_train_steps:
      return
    last_step, last_time = self._last
    now = time.perf_counter()
    if step <= last_step:
      return
    rate = (step - last_step) / max(now - last_time, 1e-9)
    self._last = (step, now)
    eta = (self.num_train_steps - step) / rate
    logging.info('step %d/%d (%.1f%%): %.2f steps/s, ETA %.1f min', step,
                 self.num_train_steps, 100 * step / self.num_train_steps,
                 rate, eta / 60)
    self.writer.write_scalars(step, {'steps_per_sec': rate})
