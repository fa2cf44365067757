"""PASCAL VOC 2012 facts: class names, colour palette, files, mask reading."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from deeplab_jax.data import images
from deeplab_jax.data.labels import bit_interleaved_palette

CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
    'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
    'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
NUM_CLASSES = len(CLASS_NAMES)

VOC_URL = ('http://host.robots.ox.ac.uk/pascal/VOC/voc2012/'
           'VOCtrainval_11-May-2012.tar')
VOC_TAR = 'VOCtrainval_11-May-2012.tar'
SBD_URL = ('http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/'
           'semantic_contours/benchmark.tgz')
SBD_TAR = 'benchmark.tgz'


def color_map() -> np.ndarray:
  """The VOC palette ([256, 3] uint8): the devkit's bit-interleaved colour
  map. Index 255 (ignore) is (224, 224, 192)."""
  return bit_interleaved_palette(256)


def read_mask(source: str | bytes | BinaryIO) -> np.ndarray:
  """Class ids ([H, W] uint8) of a VOC mask PNG.

  VOC masks are palette images whose pixel values are the class ids; they
  are read as indices (mode 'P' or 'L'), never converted to RGB.

  Raises:
    ValueError: the PNG is not a palette or grey-level image.
  """
  image, _ = images.open_image(source)  # As displayed.
  with image:
    if image.mode not in ('P', 'L'):
      raise ValueError(
          f'mask has PIL mode {image.mode!r}; VOC masks are palette (P) or '
          'grey-level (L) images whose values are class ids')
    return np.asarray(image, dtype=np.uint8)
