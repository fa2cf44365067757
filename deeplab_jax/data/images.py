"""Reading images as a viewer shows them: the one place pixels come in.

Every image the project reads from a user (predict, the dataset builders and
their decoders, calibration, the notebook) goes through `open_image`, which
applies the file's EXIF orientation (all eight values) once, before anything
else: a phone photo held upright is stored sideways with Orientation 6, and
every viewer, and so every mask drawn on it, shows it upright.
`read_rgb` then gives uint8 RGB, honouring the file's mode and bit depth.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

Source = Union[str, os.PathLike, bytes, BinaryIO]

# EXIF tag 0x0112: how the stored pixels are turned for display.
ORIENTATION_TAG = 0x0112
ORIENTATION_NAMES = {
    1: 'upright',
    2: 'mirrored left-right',
    3: 'rotated 180 degrees',
    4: 'mirrored top-bottom',
    5: 'mirrored and rotated 90 degrees counter-clockwise',
    6: 'rotated 90 degrees clockwise',
    7: 'mirrored and rotated 90 degrees clockwise',
    8: 'rotated 90 degrees counter-clockwise',
}
# Orientations whose display swaps width and height.
TRANSPOSING = frozenset({5, 6, 7, 8})
_HIGH_BIT_DEPTH_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


class ImageTooLargeError(ValueError):
  """An image has more pixels than the caller's limit
  (config.eval.max_image_pixels)."""


def _open(source: Source) -> Image.Image:
  if isinstance(source, (bytes, bytearray, memoryview)):
    source = io.BytesIO(bytes(source))
  return Image.open(source)


def orientation(image: Image.Image) -> int:
  """The EXIF orientation (1..8; 1 when absent, unreadable or invalid)."""
  try:
    value = int(image.getexif().get(ORIENTATION_TAG, 1))
  except Exception:  # pylint: disable=broad-except
    return 1  # A damaged EXIF block: the pixels are still the photo.
  return value if value in ORIENTATION_NAMES else 1


def open_image(source: Source, max_pixels: int | None = None
               ) -> tuple[Image.Image, int]:
  """(decoded PIL image as displayed, the EXIF orientation it had).

  Args:
    source: a path, encoded bytes or a binary file.
    max_pixels: refuse larger images (None: no limit of ours; PIL's own
      decompression-bomb guard is lifted to twice this).

  Raises:
    ImageTooLargeError: more than `max_pixels` pixels.
    OSError, ValueError, SyntaxError: not a readable image.
  """
  previous = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels * 2
  try:
    image = _open(source)
  except Image.DecompressionBombError as e:
    raise ImageTooLargeError(
        f'{e} (more than config.eval.max_image_pixels = {max_pixels:,}); '
        'shrink it, or raise that limit') from None
  finally:
    Image.MAX_IMAGE_PIXELS = previous
  width, height = image.size
  if max_pixels is not None and width * height > max_pixels:
    image.close()
    raise ImageTooLargeError(
        f'{width}x{height} = {width * height:,} pixels, more than '
        f'config.eval.max_image_pixels = {max_pixels:,}; shrink it, or '
        'raise that limit')
  turn = orientation(image)
  image.load()  # A truncated or corrupt file fails here.
  if turn != 1:
    # `in_place` keeps the file's mode and info; exif_transpose also drops
    # the tag, so nothing downstream can turn the pixels twice.
    ImageOps.exif_transpose(image, in_place=True)
  return image, turn


def to_rgb(image: Image.Image) -> np.ndarray:
  """[H, W, 3] uint8 RGB of a decoded image.

  16-bit and 32-bit grey images are scaled by their range to 8 bits (PIL's
  own conversion clips them to white); palette, grey, CMYK and alpha images
  are converted to RGB (alpha dropped: the colours are the photo's).
  """
  if image.mode in _HIGH_BIT_DEPTH_MODES:
    pixels = np.asarray(image, np.float64)
    top = 65535.0 if pixels.max() > 255 else 255.0
    grey = np.clip(np.round(pixels * (255.0 / top)), 0, 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
  if image.mode == 'RGB':
    return np.asarray(image)
  return np.asarray(image.convert('RGB'))


def read_rgb(source: Source, max_pixels: int | None = None) -> np.ndarray:
  """[H, W, 3] uint8 RGB pixels of an image file as a viewer shows it
  (`open_image` then `to_rgb`)."""
  image, _ = open_image(source, max_pixels)
  with image:
    return to_rgb(image)


def read_rgb_image(source: Source) -> Image.Image:
  """A PIL RGB image as displayed (for PIL-based resampling)."""
  image, _ = open_image(source)
  if image.mode == 'RGB':
    return image
  with image:
    return Image.fromarray(to_rgb(image))


def read_indices(source: Source) -> np.ndarray:
  """[H, W] uint8 pixel values of a palette or grey-level image (a mask:
  the values are class ids, never converted to colours), as displayed."""
  image, _ = open_image(source)
  with image:
    return np.asarray(image, dtype=np.uint8)


def displayed_size(source: Source) -> tuple[tuple[int, int], tuple[int, int],
                                              int]:
  """((width, height) as displayed, (width, height) as stored, orientation),
  read from the header (no pixels decoded)."""
  with _open(source) as image:
    stored = image.size
    turn = orientation(image)
  shown = stored[::-1] if turn in TRANSPOSING else stored
  return shown, stored, turn
