"""Training and evaluation metrics to TensorBoard and the log.

TensorBoard event files are written with tensorboardX, which needs no
TensorFlow (clu's writer imports TensorFlow, 1.3 GB of it, for this alone).
tensorboardX is the maintained, standard stand-alone writer; `tensorboard
--logdir runs` reads its files. Only process 0 writes files; every process
logs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary


class MetricWriter:
  """write_scalars / write_hparams / flush / close, like clu's MetricWriter.

  Args:
    logdir: the folder of the event files (created).
    just_logging: only log (processes other than 0).
  """

  def __init__(self, logdir: str | os.PathLike, *,
               just_logging: bool = False):
    self.logdir = str(logdir)
    self._writer = None
    if not just_logging:
      self._writer = SummaryWriter(logdir=self.logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={v:.6g}' for k, v in scalars.items()))
    if self._writer is not None:
      for key, value in scalars.items():
        self._writer.add_scalar(key, value, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's config as TensorBoard hyper-parameters (HPARAMS tab)."""
    if self._writer is None:
      return
    experiment, start, end = hparams_summary(dict(hparams), {})
    file_writer = self._writer.file_writer
    for summary in (experiment, start, end):
      file_writer.add_summary(summary)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


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
