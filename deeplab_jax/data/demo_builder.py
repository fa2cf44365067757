"""A built-in, procedurally generated segmentation dataset for the demo.

Scenes of disks (striped), squares (checkered) and triangles (dotted) on a
smooth, noisy background, with occlusion and an ignore band (255) along every
object boundary, as in VOC. Colours are drawn from one distribution for every
class and for the background, so a single pixel's colour says nothing about
its class: the model has to see texture and shape. Deterministic given the split and example index; no
download. Same features as `voc_segmentation`, so the same pipeline reads it.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from deeplab_jax.data.features import segmentation_features
from deeplab_jax.data.labels import IGNORE_LABEL, palette_with

CLASS_NAMES = ('background', 'disk', 'square', 'triangle')
NUM_CLASSES = len(CLASS_NAMES)
# Black background; red disks, green squares, blue triangles.
PALETTE = palette_with([(0, 0, 0), (230, 25, 75), (60, 180, 75),
                        (0, 130, 200)])
IMAGE_SIZE = 128
SPLIT_SIZES = {'train': 1024, 'validation': 128}
_SPLIT_SEEDS = {'train': 0, 'validation': 1}


def _colour(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(30, 225, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size, 3] float: a smooth blend of four corner colours, noise."""
  corners = np.stack([_colour(rng) for _ in range(4)]).reshape(2, 2, 3)
  t = np.linspace(0, 1, size, dtype=np.float32)
  top = corners[0, 0] * (1 - t[:, None]) + corners[0, 1] * t[:, None]
  bottom = corners[1, 0] * (1 - t[:, None]) + corners[1, 1] * t[:, None]
  field = top[None] * (1 - t[:, None, None]) + bottom[None] * t[:, None, None]
  return field + rng.normal(0, 10, size=(size, size, 3))


TEXTURES = {1: 'stripes', 2: 'checker', 3: 'dots'}


def _contrasting_colour(rng: np.random.Generator,
                        base: np.ndarray) -> np.ndarray:
  """A second colour at least 90 away from `base` (so textures are seen)."""
  while True:
    colour = _colour(rng)
    if np.linalg.norm(colour - base) >= 90:
      return colour


def _texture(rng: np.random.Generator, size: int, cls: int,
             region: np.ndarray) -> np.ndarray:
  """[count, 3] float: the pixels of `region` ([size, size] bool, `count`
  of them True) in a two-colour pattern of the class's family (disk:
  stripes, square: checker, triangle: dots) at a random angle, scale and
  phase, plus pixel noise. The family is a local cue that takes a patch,
  not a pixel, to read; the outline's shape is a second, global one.

  Only the region's pixels are computed (elementwise, so they equal the
  whole texture's pixels there), but the noise is drawn for the whole
  square: the random stream, and so every later scene, stays the same.
  """
  yy, xx = np.nonzero(region)
  yy, xx = yy.astype(np.float32), xx.astype(np.float32)
  angle = rng.uniform(0, np.pi)
  u = np.cos(angle) * xx + np.sin(angle) * yy + rng.uniform(0, 50)
  v = -np.sin(angle) * xx + np.cos(angle) * yy + rng.uniform(0, 50)
  kind = TEXTURES[cls]
  if kind == 'stripes':
    weight = 0.5 + 0.5 * np.sin(u * (2 * np.pi / rng.uniform(6, 10)))
  elif kind == 'checker':
    cell = rng.uniform(4, 7)
    weight = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(
        np.float32)
  else:  # Dots on a grid.
    period = rng.uniform(9, 13)
    du = (u % period) - period / 2
    dv = (v % period) - period / 2
    weight = np.exp(-(du ** 2 + dv ** 2) / (2 * (period / 5) ** 2))
  base = _colour(rng)
  second = _contrasting_colour(rng, base)
  tex = base * (1 - weight[..., None]) + second * weight[..., None]
  return tex + rng.normal(0, 10, size=(size, size, 3))[region]


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
  """[size, size] bool mask of one disk, square or triangle."""
  radius = rng.uniform(0.14, 0.28) * size
  if cls == 3:  # A triangle covers less than a disk of the same radius.
    radius *= 1.35
  cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
  canvas = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  if cls == 1:  # Disk.
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
  else:  # Square (4 corners) or triangle (3), randomly rotated.
    corners = 4 if cls == 2 else 3
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(corners) * 2 * np.pi / corners
    points = [(cx + radius * np.cos(a), cy + radius * np.sin(a))
              for a in angles]
    draw.polygon(points, fill=1)
  return np.asarray(canvas, dtype=bool)


def render_scene(seed: int | tuple[int, ...], size: int = IMAGE_SIZE
                 ) -> tuple[np.ndarray, np.ndarray]:
  """One scene.

  Returns:
    image: [size, size, 3] uint8 RGB.
    mask: [size, size] uint8 class ids (0 background, 1 disk, 2 square,
      3 triangle), 255 on a band along every boundary between labels.
  """
  rng = np.random.default_rng(seed)
  image = _background(rng, size)
  label = np.zeros((size, size), np.uint8)
  for _ in range(rng.integers(2, 5)):
    cls = int(rng.integers(1, NUM_CLASSES))
    region = _shape_mask(rng, cls, size)
    image[region] = _texture(rng, size, cls, region)
    label[region] = cls  # Later shapes occlude earlier ones.
  # Ignore band: pixels whose 3x3 neighbourhood holds another label.
  padded = np.pad(label, 1, mode='edge')
  boundary = np.zeros_like(label, dtype=bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      boundary |= padded[dy:dy + size, dx:dx + size] != label
  label[boundary] = IGNORE_LABEL
  return np.clip(image, 0, 255).astype(np.uint8), label


def _png(array: np.ndarray, mode: str) -> io.BytesIO:
  buffer = io.BytesIO()
  Image.fromarray(array, mode=mode).save(buffer, format='PNG')
  buffer.seek(0)
  return buffer


class DeeplabDemoShapes(tfds.core.GeneratorBasedBuilder):
  """Generated shapes scenes: train 1,024 and validation 128 at 128x128."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=segmentation_features('png'),
        supervised_keys=('image', 'segmentation_mask'),
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str):
    for index in range(SPLIT_SIZES[split]):
      image, mask = render_scene((_SPLIT_SEEDS[split], index))
      name = f'{split}_{index:05d}.png'
      yield name, {
          'image': _png(image, 'RGB'),
          'segmentation_mask': _png(mask, 'L'),
          'file_name': name,
      }
