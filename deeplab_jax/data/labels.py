"""Label conventions every dataset shares: the ignore label and palettes.

The ignore label is defined here once; a dataset's `DatasetSpec` carries the
one it uses, and everything downstream (loss, metrics, padding, pictures)
reads it from the spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Pixels that are not scored and not trained on (object boundaries, void,
# crop padding): 255, as in VOC, Cityscapes' train ids and the reference.
IGNORE_LABEL = 255


def bit_interleaved_palette(n: int = 256) -> np.ndarray:
  """The VOC devkit's colour map (`VOClabelcolormap.m`), [n, 3] uint8: class
  i's bits spread over R, G and B from the high bit down. It doubles as the
  generated palette for datasets without colours of their own; index 255
  is (224, 224, 192), VOC's cream void colour."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def palette_with(colors: Sequence[Sequence[int]]) -> np.ndarray:
  """A 256-entry palette whose first len(colors) entries are `colors` and
  the rest (the ignore label included) the generated one."""
  palette = bit_interleaved_palette()
  palette[:len(colors)] = np.asarray(colors, np.uint8)
  return palette
