"""Stopping a training run: SIGTERM (preemption) and Ctrl-C ask the loop
to save a checkpoint and stop at the end of the step; a second Ctrl-C
quits at once."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from deeplab_jax.errors import EXIT_INTERRUPTED


class StopFlag:
  """Set by SIGTERM (preemption) or Ctrl-C (SIGINT): the loop saves a
  checkpoint and exits at the end of the step. A second Ctrl-C exits at
  once (KeyboardInterrupt), as a user pressing it twice expects."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread (notebooks): no handler.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.raised == 'Ctrl-C':
      # The second Ctrl-C: quit now. Raising KeyboardInterrupt from here
      # could land in a callback (XLA's garbage collection hook) that
      # swallows it; the checkpoint being written stays a temporary folder
      # that the next run removes, the workdir lock goes with the process.
      print('\nSecond Ctrl-C: quitting without saving.', file=sys.stderr,
            flush=True)
      logging.flush()
      os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
    self.raised = 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'
    if signum == signal.SIGINT:
      print('\nCtrl-C: saving a checkpoint at the end of this step (press '
            'again to quit without saving).', flush=True)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.raised is not None
    flags = multihost_utils.process_allgather(np.int32(self.raised is not None))
    return bool(np.any(flags))
