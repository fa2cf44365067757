"""TFDS builder for ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Files: `ADEChallengeData2016.zip` (from the URL below, or put it or its
extracted folder in `config.data.manual_dir`). Splits: train (20,210) and
validation (2,000).

Masks are stored as released (0 = "other", 1..150 the classes); `LABEL_MAP`
applies the reference `reduce_zero_label` when they are read: 0 becomes the
ignore label and class c becomes c - 1.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from deeplab_jax.data.labels import IGNORE_LABEL
from deeplab_jax.data.features import segmentation_features
from deeplab_jax.errors import DatasetError

URL = ('http://data.csail.mit.edu/places/ADEchallenge/'
       'ADEChallengeData2016.zip')
ZIP = 'ADEChallengeData2016.zip'
FOLDER = 'ADEChallengeData2016'

CLASS_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed',
    'windowpane', 'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door',
    'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp',
    'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill',
    'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole',
    'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy',
    'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket',
    'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food',
    'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle',
    'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce',
    'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag')


def label_map() -> np.ndarray:
  """[256] uint8, reduce_zero_label: 0 -> 255 (ignore), c -> c - 1."""
  table = (np.arange(256) - 1).astype(np.int64)
  table[0] = IGNORE_LABEL
  table[len(CLASS_NAMES) + 1:] = IGNORE_LABEL
  return table.astype(np.uint8)


def _root(directory: epath.Path) -> epath.Path | None:
  for candidate in (directory / FOLDER, directory):
    if (candidate / 'images').is_dir() and (candidate / 'annotations').is_dir():
      return candidate
  return None


def check_manual_dir(manual_dir: epath.PathLike) -> None:
  path = epath.Path(manual_dir)
  if not path.is_dir() or not ((path / ZIP).exists() or _root(path)):
    raise DatasetError(
        f'The manual directory {manual_dir} lacks {ZIP} (or its extracted '
        f'{FOLDER}/ with images/ and annotations/). Download it from {URL}, '
        'or leave config.data.manual_dir unset to download it.')


class DeeplabAde20k(tfds.core.GeneratorBasedBuilder):
  """ADE20K SceneParsing: photos and masks as released (0 = other)."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Optional: put {ZIP} (from {URL}) or its extracted {FOLDER}/ in '
      'config.data.manual_dir; without it the builder downloads it.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='ADE20K SceneParsing, 150 classes (0 = other).',
        features=segmentation_features('jpeg'),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='http://sceneparsing.csail.mit.edu',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = None
    try:
      manual = epath.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):  # TFDS: no manual dir given.
      manual = None
    if manual is not None and manual.is_dir():
      check_manual_dir(manual)
      root = _root(manual) or _root(epath.Path(
          dl_manager.extract(manual / ZIP)))
    else:
      try:
        root = _root(epath.Path(dl_manager.download_and_extract(URL)))
      except Exception as e:  # pylint: disable=broad-except
        raise DatasetError(
            f'Could not download ADE20K ({e}). Offline? Fetch {URL} '
            'elsewhere and pass --config.data.manual_dir=DIR.') from e
    if root is None:
      raise DatasetError(f'{ZIP} holds no {FOLDER}/images and annotations.')
    return {split: self._generate_examples(root, folder)
            for split, folder in (('train', 'training'),
                                  ('validation', 'validation'))}

  def _generate_examples(self, root: epath.Path, folder: str
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for image_path in sorted((root / 'images' / folder).glob('*.jpg')):
      mask_path = root / 'annotations' / folder / f'{image_path.stem}.png'
      if not mask_path.exists():
        logging.warning('Skipping %s: no %s', image_path, mask_path)
        continue
      yield image_path.stem, {
          'image': io.BytesIO(image_path.read_bytes()),
          'segmentation_mask': io.BytesIO(mask_path.read_bytes()),
          'file_name': image_path.name}
