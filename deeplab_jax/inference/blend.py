"""From logits on a coarse grid to class ids at an image's own size, in
bands of rows: the last step of every inference, whole or tiled.

The model's logits sit on a regular grid of the image it was given: with
align-corners sampling (the reference's), grid point j is input pixel
j * e for its logit stride e. A *view* is one pass over the image (one
scale, flipped or not): its grid, and the affine map from a pixel of the
original image to a grid coordinate. Tiles of a sliding window whose starts
are multiples of e share one grid, so their logits are averaged there
(weighted towards each tile's centre: `SlideView`); a whole-image pass is
one such grid (`WholeView`).

`finish` resamples every view's grid to a band of output rows (two-tap
bilinear along rows, then columns), averages the views' softmax
probabilities (one view: its logits, same argmax) and takes the argmax, one
compiled program per band shape. Memory is the band's, never the image's
C-channel scores: a 10000x8000 image with 21 classes would need 6.7 GB of
them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Output widths are padded to a multiple of this (few compiled shapes).
WIDTH_GRANULARITY = 128
# Values of one view's resampled band ([F, rows, width, classes]): 32 MB.
BAND_VALUES = 1 << 23


@dataclasses.dataclass(frozen=True)
class AxisMap:
  """grid coordinate = scale * output pixel + offset along one axis,
  clipped to [0, limit] (default: the grid's last point, size - 1); the
  limit keeps samples inside the image when it was padded."""
  scale: float
  offset: float
  size: int
  limit: float | None = None

  def taps(self, pixels: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi) int32 grid indices and their float32 weights for output
    `pixels`."""
    top = self.size - 1 if self.limit is None else min(self.limit,
                                                       self.size - 1)
    coords = np.clip(pixels.astype(np.float64) * self.scale + self.offset,
                     0.0, top)
    lo = np.floor(coords).astype(np.int32)
    hi = np.minimum(lo + 1, self.size - 1).astype(np.int32)
    frac = coords - lo
    return (lo, hi, (1.0 - frac).astype(np.float32),
            frac.astype(np.float32))


def pixel_map(out_size: int, in_size: int, grid_size: int,
              grid_stride: float) -> AxisMap:
  """Output pixels of an image of `out_size` onto the grid of its copy
  resized (pixel centres aligned, as PIL resizes) to `in_size`, whose grid
  point j is pixel j * grid_stride. Samples stay inside the resized image
  (pixels [0, in_size - 1]), never in its padding."""
  limit = (in_size - 1) / grid_stride
  if in_size == out_size:
    return AxisMap(1.0 / grid_stride, 0.0, grid_size, limit)
  ratio = in_size / out_size
  return AxisMap(ratio / grid_stride, (0.5 * ratio - 0.5) / grid_stride,
                 grid_size, limit)


class View:
  """One pass's logits on a grid: `grid_shape` (rows, cols), `flips`
  passes stacked, and where each output pixel falls on it."""

  rows: AxisMap
  cols: AxisMap
  flips: int

  def ensure_rows(self, stop: int) -> None:
    """Makes grid rows [.., stop) final (a sliding window runs tiles)."""

  def take(self, start: int, count: int) -> np.ndarray:
    """[flips, count, grid cols, classes] float32 logits of grid rows
    [start, start + count), zeros past the grid's end."""
    raise NotImplementedError

  def release_below(self, row: int) -> None:
    """Grid rows below `row` will not be taken again."""


class WholeView(View):
  """A whole-image pass: the grid is the model's output."""

  def __init__(self, grid: np.ndarray, rows: AxisMap, cols: AxisMap):
    self.grid = grid  # [flips, rows, cols, classes]
    self.rows, self.cols, self.flips = rows, cols, grid.shape[0]

  def take(self, start: int, count: int) -> np.ndarray:
    slab = self.grid[:, start:start + count]
    missing = count - slab.shape[1]
    if missing:
      slab = np.pad(slab, ((0, 0), (0, missing), (0, 0), (0, 0)))
    return slab


def tile_weights(span: int, weighting: str) -> np.ndarray:
  """[span] float32 weights along one side of a tile: 'uniform' (1), or
  'gaussian' (sigma = span / 8, as nnU-Net and MONAI weigh patches;
  floored at 1e-3), which trusts a tile's centre, where it sees context
  on every side, over its borders."""
  if weighting == 'uniform':
    return np.ones(span, np.float32)
  x = (np.arange(span) - (span - 1) / 2) / (span / 8)
  return np.maximum(np.exp(-0.5 * x * x), 1e-3).astype(np.float32)


class SlideView(View):
  """A sliding-window pass: tiles run in raster order, `batch` at a time,
  their weighted logits summed on the shared grid in a buffer of the rows
  still needed, so that memory follows the tile batch and the image's
  width, not its height.

  A grid point one tile covers keeps that tile's logits exactly (so one
  tile over the whole image gives the whole-image result bit for bit);
  where tiles overlap, their logits are averaged with `tile_weights`.

  Args:
    tile_starts: (row starts, col starts) in grid points.
    tile_span: grid points of one tile (its logits' side).
    grid_shape: (rows, cols) of the whole grid.
    run_tiles: ([i, j] tile indices) -> [flips, len, span, span, classes]
      logits of those tiles.
    batch: tiles per `run_tiles` call.
    weighting: 'gaussian' or 'uniform' (`tile_weights`).
    on_tiles: called with the number of tiles done so far (progress).
  """

  def __init__(self, *, tile_starts: tuple[Sequence[int], Sequence[int]],
               tile_span: int, grid_shape: tuple[int, int],
               run_tiles: Callable[[list[tuple[int, int]]], np.ndarray],
               batch: int, flips: int, rows: AxisMap, cols: AxisMap,
               weighting: str = 'gaussian',
               on_tiles: Callable[[int], None] | None = None):
    self.rows, self.cols, self.flips = rows, cols, flips
    self._starts = tile_starts
    self._span = tile_span
    self._grid_rows, self._grid_cols = grid_shape
    self._run_tiles = run_tiles
    self._batch = batch
    self._on_tiles = on_tiles
    side = tile_weights(tile_span, weighting)
    self._weight = side[:, None] * side[None, :]
    self._tiles = [(i, j) for i in range(len(tile_starts[0]))
                   for j in range(len(tile_starts[1]))]
    self._next = 0
    self._base = 0  # Grid row of the buffers' first row.
    # Per grid point: the logits' weighted sum (or, covered once, the
    # logits), the weights' sum, the first tile's weight, the tile count.
    self._sum: np.ndarray | None = None  # [flips, rows, cols, classes]
    self._weights = np.zeros((0, self._grid_cols), np.float32)
    self._first = np.zeros((0, self._grid_cols), np.float32)
    self._count = np.zeros((0, self._grid_cols), np.int32)
    self.peak_rows = 0  # The most grid rows held at once.

  @property
  def tiles(self) -> int:
    return len(self._tiles)

  def _final(self) -> int:
    """Grid rows below this have every tile that covers them summed."""
    if self._next >= len(self._tiles):
      return self._grid_rows
    return self._starts[0][self._tiles[self._next][0]]

  def _grow(self, rows: int, flips: int, classes: int) -> None:
    if self._sum is None:
      self._sum = np.zeros((flips, 0, self._grid_cols, classes), np.float32)
    extra = rows - self._sum.shape[1]
    if extra > 0:
      self._sum = np.concatenate(
          [self._sum, np.zeros((flips, extra, self._grid_cols, classes),
                               np.float32)], axis=1)
      pad = np.zeros((extra, self._grid_cols), np.float32)
      self._weights = np.concatenate([self._weights, pad])
      self._first = np.concatenate([self._first, pad])
      self._count = np.concatenate([self._count, pad.astype(np.int32)])
      self.peak_rows = max(self.peak_rows, rows)

  def _add(self, i: int, j: int, logits: np.ndarray) -> None:
    top = self._starts[0][i] - self._base
    left = self._starts[1][j]
    self._grow(top + self._span, logits.shape[0], logits.shape[-1])
    area = (slice(top, top + self._span), slice(left, left + self._span))
    total = self._sum[(slice(None),) + area]
    count, weight = self._count[area], self._weight
    fresh, second = count == 0, count == 1
    # Covered once so far: its logits were kept as they are; weigh them.
    total[:, second] *= self._first[area][second][None, :, None]
    total += np.where(fresh[None, :, :, None], logits,
                      logits * weight[None, :, :, None])
    self._first[area] = np.where(fresh, weight, self._first[area])
    self._weights[area] += weight
    count += 1

  def ensure_rows(self, stop: int) -> None:
    while self._final() < min(stop, self._grid_rows):
      chunk = self._tiles[self._next:self._next + self._batch]
      logits = self._run_tiles(chunk)
      for k, (i, j) in enumerate(chunk):
        self._add(i, j, logits[:, k])
      self._next += len(chunk)
      if self._on_tiles is not None:
        self._on_tiles(self._next)

  def take(self, start: int, count: int) -> np.ndarray:
    assert start >= self._base, (start, self._base)
    rows = slice(start - self._base, start - self._base + count)
    total = self._sum[:, rows]
    once = (self._count[rows] <= 1)[None, :, :, None]
    slab = np.where(once, total,
                    total / self._weights[rows][None, :, :, None])
    missing = count - slab.shape[1]  # Rows past the buffer are never read.
    if missing:
      slab = np.pad(slab, ((0, 0), (0, missing), (0, 0), (0, 0)))
    return slab

  def release_below(self, row: int) -> None:
    drop = row - self._base
    if drop > 0 and self._sum is not None:
      self._sum = np.ascontiguousarray(self._sum[:, drop:])
      self._weights = self._weights[drop:].copy()
      self._first = self._first[drop:].copy()
      self._count = self._count[drop:].copy()
      self._base = row


@functools.partial(jax.jit, static_argnames=('with_confidence',))
def _finish_band(slabs, row_taps, col_taps, *, with_confidence: bool):
  """Class ids (and the winning probability) of one band of output rows.

  Args:
    slabs: per view [flips, slab rows, grid cols, classes] logits.
    row_taps, col_taps: per view (lo, hi, w_lo, w_hi) into the slab's
      rows and the grid's columns, one entry per output row / column.
  """
  total, count = None, 0
  for slab, (r_lo, r_hi, r_wl, r_wh), (c_lo, c_hi, c_wl, c_wh) in zip(
      slabs, row_taps, col_taps):
    x = (jnp.take(slab, r_lo, axis=1) * r_wl[None, :, None, None] +
         jnp.take(slab, r_hi, axis=1) * r_wh[None, :, None, None])
    x = (jnp.take(x, c_lo, axis=2) * c_wl[None, None, :, None] +
         jnp.take(x, c_hi, axis=2) * c_wh[None, None, :, None])
    for f in range(x.shape[0]):
      if len(slabs) == 1 and x.shape[0] == 1:
        total = x[f]  # One view: its logits have the same argmax.
      else:
        p = jax.nn.softmax(x[f], axis=-1)
        total = p if total is None else total + p
      count += 1
  classes = jnp.argmax(total, axis=-1).astype(jnp.uint8)
  if not with_confidence:
    return classes, None
  if count == 1:
    top = jnp.max(total, axis=-1, keepdims=True)
    confidence = 1.0 / jnp.sum(jnp.exp(total - top), axis=-1)
  else:
    confidence = jnp.max(total, axis=-1) / count
  return classes, confidence


def band_rows(width: int, classes: int, flips: int, height: int) -> int:
  """Output rows per band: BAND_VALUES per view, at most the (rounded)
  image height."""
  rows = BAND_VALUES // max(1, width * classes * flips)
  rows = max(8, min(rows, 1024)) // 8 * 8
  return min(rows, -(-height // 32) * 32)


def finish(views: Sequence[View], height: int, width: int, classes: int, *,
           with_confidence: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
  """[height, width] uint8 class ids (and float32 confidence, the winning
  class's probability averaged over views) of an image from its views."""
  padded_width = -(-width // WIDTH_GRANULARITY) * WIDTH_GRANULARITY
  flips = max(v.flips for v in views)
  rows = band_rows(padded_width, classes, flips, height)
  columns = np.minimum(np.arange(padded_width), width - 1)
  col_taps = tuple(v.cols.taps(columns) for v in views)
  # Slab rows per view: the grid rows a band of `rows` output rows reads.
  slab_rows = [int(np.floor(v.rows.scale * (rows - 1))) + 3 for v in views]
  out = np.empty((height, width), np.uint8)
  confidence = (np.empty((height, width), np.float32) if with_confidence
                else None)
  for top in range(0, height, rows):
    pixels = np.minimum(np.arange(top, top + rows), height - 1)
    slabs, row_taps = [], []
    for view, count in zip(views, slab_rows):
      lo, hi, w_lo, w_hi = view.rows.taps(pixels)
      start = int(lo[0])
      view.release_below(start)  # Earlier bands are done with them.
      view.ensure_rows(int(hi[-1]) + 1)
      slabs.append(view.take(start, count))
      row_taps.append((lo - start, hi - start, w_lo, w_hi))
    band, band_confidence = _finish_band(
        tuple(slabs), tuple(row_taps), col_taps,
        with_confidence=with_confidence)
    n = min(rows, height - top)
    out[top:top + n] = np.asarray(band)[:n, :width]
    if with_confidence:
      confidence[top:top + n] = np.asarray(band_confidence)[:n, :width]
  return out, confidence
