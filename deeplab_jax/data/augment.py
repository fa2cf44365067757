"""Image/label transforms of the reference recipe, in numpy and PIL.

Training (reference `input_preprocess.preprocess_image_and_label`): random
scale from {min, min + step, ..., max}, pad to the crop size (image with the
mean pixel, label with the ignore label, at the bottom/right), random crop,
random left-right flip, normalise as the backbone says (its
`Preprocessing`; MobileNetV2: [-1, 1]). The crop is computed first and
only the part of the scaled image it covers is resampled (PIL's `box`), which
gives the same pixels as scaling the whole image and then cropping, at a
fraction of the cost for large scales.

Evaluation and prediction prepare images by the inference policy
(deeplab_jax/inference/).

The image is resampled bilinearly (PIL) and the label with nearest neighbour
(numpy indexing), both with the pixel-centre convention, so they stay
aligned.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from deeplab_jax.data import images, voc
from deeplab_jax.models.backbones import Preprocessing


def decode_image(data: bytes) -> Image.Image:
  """An RGB PIL image from encoded (JPEG or PNG) bytes, as displayed (its
  EXIF orientation applied: `images.open_image`)."""
  return images.read_rgb_image(data)


def decode_mask(data: bytes) -> np.ndarray:
  """[H, W] uint8 class ids from a PNG (palette or grey-level)."""
  mask = voc.read_mask(data)
  return mask[..., 0] if mask.ndim == 3 else mask


def sample_scale(rng: np.random.Generator, min_scale: float,
                 max_scale: float, step: float) -> float:
  """The reference's `get_random_scale`: one of linspace(min, max) spaced by
  `step`, or uniform in [min, max] when step is 0."""
  if min_scale == max_scale:
    return float(min_scale)
  if step <= 0:
    return float(rng.uniform(min_scale, max_scale))
  count = int((max_scale - min_scale) / step + 1)
  return float(rng.choice(np.linspace(min_scale, max_scale, count)))


def _nearest_indices(start: int, count: int, step: float,
                     size: int) -> np.ndarray:
  centres = (np.arange(start, start + count) + 0.5) * step
  return np.minimum(centres.astype(np.int64), size - 1)


def _padded(shape: tuple[int, ...], preprocessing: Preprocessing
            ) -> np.ndarray:
  """A float32 image of `shape` filled with the backbone's normalised pad
  value: the reference pads with the mean pixel, which is 0 once
  normalised by (pixel - mean) / scale."""
  return np.full(shape, preprocessing.pad_value, np.float32)


def random_scale_crop_flip(image: Image.Image, mask: np.ndarray,
                           rng: np.random.Generator, *, crop_size: int,
                           preprocessing: Preprocessing, ignore_label: int,
                           min_scale: float = 0.5, max_scale: float = 2.0,
                           scale_step: float = 0.25, flip: bool = True
                           ) -> tuple[np.ndarray, np.ndarray]:
  """One training example.

  Args:
    image: RGB PIL image.
    mask: [H, W] uint8 class ids, same size.
    rng: numpy generator (grain gives one per record and epoch).
    crop_size: output height and width.
    preprocessing: the backbone's input normalisation.
    min_scale, max_scale, scale_step: see `sample_scale`.
    ignore_label: label of padding.
    flip: random left-right flip with probability 0.5.

  Returns:
    image [crop, crop, 3] float32, normalised; label [crop, crop] uint8.
  """
  width, height = image.size
  scale = sample_scale(rng, min_scale, max_scale, scale_step)
  scaled_h = max(1, int(height * scale))
  scaled_w = max(1, int(width * scale))
  padded_h, padded_w = max(scaled_h, crop_size), max(scaled_w, crop_size)
  top = int(rng.integers(0, padded_h - crop_size + 1))
  left = int(rng.integers(0, padded_w - crop_size + 1))
  # The part of the crop inside the scaled image (the rest is padding).
  region_h = min(top + crop_size, scaled_h) - top
  region_w = min(left + crop_size, scaled_w) - left
  sy, sx = height / scaled_h, width / scaled_w
  box = (left * sx, top * sy, (left + region_w) * sx, (top + region_h) * sy)
  region = image.resize((region_w, region_h), Image.BILINEAR, box=box)
  # Nearest neighbour with the same pixel-centre convention as PIL's
  # bilinear: output pixel y samples source row floor((top + y + 0.5) * sy).
  rows = _nearest_indices(top, region_h, sy, height)
  cols = _nearest_indices(left, region_w, sx, width)
  out_image = _padded((crop_size, crop_size, 3), preprocessing)
  out_image[:region_h, :region_w] = preprocessing.normalize(
      np.asarray(region))
  out_label = np.full((crop_size, crop_size), ignore_label, np.uint8)
  out_label[:region_h, :region_w] = mask[rows[:, None], cols[None, :]]
  if flip and rng.random() < 0.5:
    out_image = out_image[:, ::-1]
    out_label = out_label[:, ::-1]
  return np.ascontiguousarray(out_image), np.ascontiguousarray(out_label)
