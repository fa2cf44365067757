"""One trainer per workdir (an exclusive lock on `<workdir>/train.lock`),
one --follow evaluator per results folder (`follow.lock`).

The lock is an `fcntl.flock` on the file, which the operating system drops
when the process ends however it ends (kill -9 included), so a stale lock
cannot block the next run; the file records the holder's host, pid and start
time for the message a second trainer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from deeplab_jax.errors import CheckpointError

LOCK_FILE = 'train.lock'


def _holder(fd: int, wait_seconds: float = 1.0) -> str:
  """The holder's line; a holder that has just taken the lock may not have
  written it yet, so an empty file is read again for a moment."""
  deadline = time.monotonic() + wait_seconds
  while True:
    text = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    if text or time.monotonic() > deadline:
      return text
    time.sleep(0.02)


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for one training run
  (or, with another `lock_file`, a folder for another kind of run).

  Raises:
    CheckpointError: another process holds it (naming host and pid), or
      the workdir cannot be written.
  """

  def __init__(self, workdir: str | os.PathLike, *,
               lock_file: str = LOCK_FILE, what: str = 'trained',
               instead: str = 'train in another --workdir'):
    self.path = os.path.join(os.fspath(workdir), lock_file)
    self.what, self.instead = what, instead
    self._fd: int | None = None

  def __enter__(self) -> 'WorkdirLock':
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise CheckpointError(
          f'Cannot write to the workdir {os.path.dirname(self.path)} '
          f'({e.strerror}): pass a writable --workdir.') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _holder(fd)
      os.close(fd)
      raise CheckpointError(
          f'{os.path.dirname(self.path)} is being {self.what} by another run '
          f'({holder or "unknown process"}). Wait for it to finish or stop '
          f'it, or {self.instead}.') from None
    os.ftruncate(fd, 0)
    os.write(fd, (f'host {socket.gethostname()}, pid {os.getpid()}, since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
