"""A one-line progress report for evaluation and prediction (stderr)."""

from __future__ import annotations

import sys
import time


class Progress:
  """A one-line progress report for evaluation and prediction."""

  def __init__(self, what: str, total: int | None, every_seconds: float = 5):
    self.what, self.total = what, total
    self.every = every_seconds
    self.start = self.last = time.perf_counter()
    self.done = 0

  def update(self, count: int = 1) -> None:
    self.done += count
    now = time.perf_counter()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      total = f'/{self.total}' if self.total else ''
      print(f'\r{self.what}: {self.done}{total} images ({rate:.1f}/s)',
            end='' if self.done != self.total else '\n', file=sys.stderr,
            flush=True)

  def close(self) -> None:
    if self.total is None or self.done != self.total:
      print(file=sys.stderr, flush=True)


class TileProgress:
  """A progress line for an image whose tiles take more than a few
  seconds (silent for quick ones)."""

  def __init__(self, name: str, total: int, megapixels: float,
               after_seconds: float = 3.0):
    self.name, self.total, self.megapixels = name, total, megapixels
    self.after = after_seconds
    self.start = self.last = time.perf_counter()
    self.shown = False

  def __call__(self, done: int) -> None:
    now = time.perf_counter()
    if now - self.start < self.after or (now - self.last < 2.0 and
                                         done < self.total):
      return
    self.last, self.shown = now, True
    rate = self.megapixels * done / self.total / (now - self.start)
    print(f'\r{self.name}: {done}/{self.total} tiles ({rate:.2f} MP/s)',
          end='', file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.shown:
      print(file=sys.stderr, flush=True)
