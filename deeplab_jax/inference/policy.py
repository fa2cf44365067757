"""How an image of any size is run: the inference policy of `config.eval`.

One policy serves evaluation, prediction and the exported-file runtimes:

* `eval.input_scale`: the image is first scaled by a factor: 'native' (1),
  'fit' (its longer side at most `eval.crop_size`, as the official mobile
  exports are fed), or a number.
* `eval.mode`: 'whole' pads the scaled image to a canvas of k * output
  stride + 1 pixels per side (at least `eval.crop_size`; sizes rounded up
  to a multiple of `CANVAS_GRANULARITY`, so that few shapes compile) and
  runs it at once, multi-scale and flipped as the reference does (the
  canvas is padded, then scaled). 'slide' cuts it into tiles of
  `eval.tile_size` every `eval.tile_stride` pixels, run `eval.tile_batch` at
  a time through one compiled program, and averages the tiles' logits where
  they overlap (`eval.tile_weighting`: 'gaussian' trusts each tile's
  centre over its borders, 'uniform' weighs them alike). A model whose head
  pools the whole image (ASPP's image pooling) gets the whole image's mean
  feature in every tile (`eval.slide_context = 'image'`, a first backbone
  pass over the tiles), not only its tile's ('tile'). 'auto' is whole while its largest input
  (canvas x the largest scale squared) has at most `eval.max_whole_pixels`
  pixels, slide beyond.

This module is the geometry only (numpy, picklable: the eval pipeline's
worker processes call it); `segmenter.py` runs it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from deeplab_jax.errors import ConfigError
from deeplab_jax.ops.resize import scale_dimension

INPUT_SCALES = ('native', 'fit')
MODES = ('auto', 'whole', 'slide')
TILE_WEIGHTINGS = ('gaussian', 'uniform')
SLIDE_CONTEXTS = ('image', 'tile')
# Whole-image canvases are k * 64 + 1 pixels per side (a multiple of every
# output stride, plus one for the reference's align-corners grid): VOC's
# images all fit 513, Cityscapes' 1024x2048 take 1025x2049.
CANVAS_GRANULARITY = 64


def parse_input_scale(value: Any) -> str | float:
  """'native', 'fit' or a positive float (a number given as text, as the
  command line gives it, included); ValueError otherwise."""
  if isinstance(value, str):
    text = value.strip().lower()
    if text in INPUT_SCALES:
      return text
    value = float(text)  # ValueError for other words.
  if isinstance(value, bool):
    raise ValueError(value)
  factor = float(value)
  if not 0 < factor <= 16 or math.isnan(factor):
    raise ValueError(value)
  return factor


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Tiles over a (scaled) image of `size`: tile t starts at
  (row_starts[i], col_starts[j]); the canvas they cover (>= size) is padded
  at the bottom and right."""
  size: tuple[int, int]
  tile: int
  stride: int
  row_starts: tuple[int, ...]
  col_starts: tuple[int, ...]

  @property
  def canvas(self) -> tuple[int, int]:
    return (self.row_starts[-1] + self.tile, self.col_starts[-1] + self.tile)

  @property
  def count(self) -> int:
    return len(self.row_starts) * len(self.col_starts)


def tile_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
  """Starts 0, stride, 2 stride, ... of the fewest tiles that cover
  `length` pixels (the last one reaching past it is padded): a regular grid
  keeps every tile's logits on one shared grid of the image. (Moving the
  last tile back to end at the image's edge, as mmsegmentation does, gave
  1.5 points less on the VOC sample at tile 257.)"""
  count = max(0, -(-(length - tile) // stride)) + 1
  return tuple(i * stride for i in range(count))


@dataclasses.dataclass(frozen=True)
class InferencePolicy:
  """`config.eval`'s answer to "how is this image run?" (see the module
  docstring). `fixed_input`: an exported file whose input is exactly
  `crop_size` square (its canvas and its tiles)."""
  input_scale: str | float = 'native'
  mode: str = 'auto'
  crop_size: int = 513
  tile_size: int = 513
  tile_stride: int | None = None
  tile_batch: int = 4
  tile_weighting: str = 'gaussian'
  slide_context: str = 'image'
  max_whole_pixels: int = 4_194_304
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  output_stride: int = 16
  fixed_input: bool = False

  @classmethod
  def from_config(cls, config: Any) -> 'InferencePolicy':
    e = config.eval
    return cls(input_scale=parse_input_scale(e.input_scale), mode=e.mode,
               crop_size=int(e.crop_size), tile_size=int(e.tile_size),
               tile_stride=(None if e.tile_stride is None
                            else int(e.tile_stride)),
               tile_batch=int(e.tile_batch),
               tile_weighting=e.tile_weighting,
               slide_context=e.slide_context,
               max_whole_pixels=int(e.max_whole_pixels),
               scales=tuple(float(s) for s in e.scales), flip=bool(e.flip),
               output_stride=int(e.output_stride),
               fixed_input=e.runtime != 'jax')

  # ----------------------------------------------------------- scaling

  def scale_factor(self, height: int, width: int) -> float:
    """The input scale of an image of this size."""
    if self.input_scale == 'native':
      return 1.0
    if self.input_scale == 'fit':
      return min(1.0, self.crop_size / max(height, width))
    return float(self.input_scale)

  def scaled_size(self, height: int, width: int,
                  extra_scale: float = 1.0) -> tuple[int, int]:
    """(h, w) of the image scaled by its input scale (times
    `extra_scale`, a multi-scale view of slide mode)."""
    factor = self.scale_factor(height, width) * extra_scale
    if factor == 1.0:
      return height, width
    return (max(1, round(height * factor)), max(1, round(width * factor)))

  # ------------------------------------------------------------- whole

  def whole_canvas(self, height: int, width: int) -> tuple[int, int]:
    """The padded canvas of a scaled image of (height, width) in whole
    mode."""
    if self.fixed_input:
      return self.crop_size, self.crop_size
    g = CANVAS_GRANULARITY
    return tuple(self.crop_size if d <= self.crop_size else
                 _round_up(d - 1, g) + 1 for d in (height, width))

  def whole_pixels(self, height: int, width: int) -> int:
    """Pixels of the largest input whole mode runs for a scaled image of
    this size (the canvas at the largest scale)."""
    ch, cw = self.whole_canvas(height, width)
    top = max(self.scales)
    return scale_dimension(ch, top) * scale_dimension(cw, top)

  def choose(self, height: int, width: int) -> str:
    """'whole' or 'slide' for an image of (height, width) before scaling.

    Raises:
      ConfigError: `eval.mode = 'whole'` for an image whole mode cannot
        take (say what to do instead).
    """
    h, w = self.scaled_size(height, width)
    if self.mode == 'slide':
      return 'slide'
    if self.fixed_input:
      fits = h <= self.crop_size and w <= self.crop_size
      if fits or self.mode == 'auto':
        return 'whole' if fits else 'slide'
      raise ConfigError(
          f'A {width}x{height} image (scaled to {w}x{h}) does not fit the '
          f"exported file's {self.crop_size}x{self.crop_size} input: use "
          "--config.eval.mode=slide (or auto), or "
          "--config.eval.input_scale=fit.")
    pixels = self.whole_pixels(h, w)
    if pixels <= self.max_whole_pixels:
      return 'whole'
    if self.mode == 'auto':
      return 'slide'
    raise ConfigError(
        f'A {width}x{height} image needs a {pixels / 1e6:.1f} MP input in '
        f'whole mode, more than config.eval.max_whole_pixels '
        f'({self.max_whole_pixels / 1e6:.1f} MP): use '
        '--config.eval.mode=slide (or auto), which tiles it in bounded '
        'memory, or raise that limit.')

  # ------------------------------------------------------------- slide

  def tile(self) -> int:
    """The tile side: `tile_size` rounded down to k * output stride + 1
    (the file's input for an exported file)."""
    if self.fixed_input:
      return self.crop_size
    os_ = self.output_stride
    return max(os_ + 1, (self.tile_size - 1) // os_ * os_ + 1)

  def stride(self, grid_stride: int) -> int:
    """The step between tiles: `tile_stride` (default two thirds of the
    tile) rounded down to a multiple of the model's logit grid
    (`grid_stride` pixels), so that all tiles' logits share one grid."""
    wanted = (self.tile_stride if self.tile_stride is not None
              else (2 * self.tile()) // 3)
    wanted = min(wanted, self.tile() - 1)
    return max(grid_stride, wanted // grid_stride * grid_stride)

  def tiling(self, height: int, width: int, grid_stride: int) -> Tiling:
    """The tiles of a scaled image of (height, width)."""
    tile, stride = self.tile(), self.stride(grid_stride)
    return Tiling((height, width), tile, stride,
                  tile_starts(height, tile, stride),
                  tile_starts(width, tile, stride))
