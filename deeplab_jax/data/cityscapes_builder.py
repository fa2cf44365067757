"""TFDS builder for Cityscapes fine annotations (gtFine), 19 train classes.

Files (registration needed, so never downloaded here): in
`config.data.manual_dir`, `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` from https://www.cityscapes-dataset.com, or their
extracted `leftImg8bit/` and `gtFine/` folders. Splits: train (2,975) and
validation (500; the official val).

Masks are stored as the official `*_gtFine_labelIds.png` (ids 0..33, -1 as
255); `LABEL_MAP` turns them into the 19 train ids (255 = ignore) when
they are read, as the official `labels.py` defines.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from deeplab_jax.data import images as image_io
from deeplab_jax.data.labels import IGNORE_LABEL, palette_with
from deeplab_jax.data.features import segmentation_features
from deeplab_jax.errors import DatasetError

IMAGES_ZIP = 'leftImg8bit_trainvaltest.zip'
LABELS_ZIP = 'gtFine_trainvaltest.zip'

# The official labels.py: (name, id, trainId) for the 19 evaluated classes.
TRAIN_CLASSES = (
    ('road', 7), ('sidewalk', 8), ('building', 11), ('wall', 12),
    ('fence', 13), ('pole', 17), ('traffic light', 19),
    ('traffic sign', 20), ('vegetation', 21), ('terrain', 22), ('sky', 23),
    ('person', 24), ('rider', 25), ('car', 26), ('truck', 27), ('bus', 28),
    ('train', 31), ('motorcycle', 32), ('bicycle', 33))
CLASS_NAMES = tuple(name for name, _ in TRAIN_CLASSES)
PALETTE = palette_with([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32)])
PALETTE[IGNORE_LABEL] = (0, 0, 0)


def label_map() -> np.ndarray:
  """[256] uint8: official label id -> train id (255 for the rest)."""
  table = np.full(256, IGNORE_LABEL, np.uint8)
  for train_id, (_, label_id) in enumerate(TRAIN_CLASSES):
    table[label_id] = train_id
  return table


MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Cityscapes needs a (free) registration: download {IMAGES_ZIP} and
{LABELS_ZIP} from https://www.cityscapes-dataset.com/downloads/ and put
them (or their extracted leftImg8bit/ and gtFine/ folders) in one folder:
--config.data.manual_dir=DIR.
"""


def _roots(directory: epath.Path) -> tuple[epath.Path, epath.Path] | None:
  images, labels = directory / 'leftImg8bit', directory / 'gtFine'
  return (images, labels) if images.is_dir() and labels.is_dir() else None


def check_manual_dir(manual_dir: epath.PathLike) -> None:
  path = epath.Path(manual_dir)
  if not path.is_dir():
    raise DatasetError(f'The manual directory {manual_dir} does not exist.\n'
                       f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')
  has_zips = (path / IMAGES_ZIP).exists() and (path / LABELS_ZIP).exists()
  if not has_zips and _roots(path) is None:
    raise DatasetError(f'The manual directory {manual_dir} lacks {IMAGES_ZIP} '
                       f'and {LABELS_ZIP} (or leftImg8bit/ and gtFine/).\n'
                       f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')


class DeeplabCityscapes(tfds.core.GeneratorBasedBuilder):
  """Cityscapes gtFine: photos and official label-id masks."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Cityscapes fine annotations; masks hold label ids.',
        features=segmentation_features('png'),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='https://www.cityscapes-dataset.com',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    try:
      manual = epath.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS: no manual dir given.
      raise DatasetError('Cityscapes is not downloadable without an '
                         f'account.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}') from None
    check_manual_dir(manual)
    roots = _roots(manual)
    if roots is None:
      images = dl_manager.extract(manual / IMAGES_ZIP)
      labels = dl_manager.extract(manual / LABELS_ZIP)
      roots = (epath.Path(images) / 'leftImg8bit',
               epath.Path(labels) / 'gtFine')
    images_root, labels_root = roots
    return {split: self._generate_examples(images_root / folder,
                                           labels_root / folder)
            for split, folder in (('train', 'train'), ('validation', 'val'))}

  def _generate_examples(self, images: epath.Path, labels: epath.Path
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    if not images.is_dir():
      raise DatasetError(f'{images} is missing: the Cityscapes files are '
                         f'incomplete.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    for image_path in sorted(images.glob('*/*_leftImg8bit.png')):
      stem = image_path.name[:-len('_leftImg8bit.png')]
      mask_path = (labels / image_path.parent.name /
                   f'{stem}_gtFine_labelIds.png')
      if not mask_path.exists():
        logging.warning('Skipping %s: no %s', image_path, mask_path.name)
        continue
      mask, _ = image_io.open_image(os.fspath(mask_path))
      with mask:
        ids = np.asarray(mask)
      # Label id -1 (license plate) is stored as 255 by the official tools.
      ids = np.where(ids < 0, 255, ids).astype(np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(ids, mode='L').save(buffer, format='PNG')
      yield stem, {'image': io.BytesIO(image_path.read_bytes()),
                   'segmentation_mask': io.BytesIO(buffer.getvalue()),
                   'file_name': image_path.name}
