"""TFDS builder for PASCAL VOC 2012 semantic segmentation (and SBD train_aug).

TFDS's own `voc/2012` has detection boxes but no segmentation masks, hence
this builder. It stores `array_record` files that `tfds.data_source` + grain
read with no TensorFlow installed: images keep their original JPEG bytes and
masks are re-encoded as grey-level PNGs of class ids with PIL.

Configs:
  voc2012:      train (1,464) and validation (1,449) from
                VOCtrainval_11-May-2012.tar.
  voc2012_aug:  train = VOC train + SBD (benchmark.tgz, cls/*.mat) minus
                every VOC val image (10,582); the same validation split.

Sources, in order: `manual_dir` holding the tar files, or already extracted
`VOCdevkit/` (and `benchmark_RELEASE/`) folders; otherwise the official URLs
through the download manager.

Bad input: a corrupt JPEG or a mask whose size differs from its image is
skipped with a warning naming the file, and the skipped files are counted at
the end (and kept in the dataset's metadata); a mask holding values other
than 0..20 and 255 stops the build with an error naming the file and the
stray values.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from deeplab_jax.data import images, voc
from deeplab_jax.data.labels import IGNORE_LABEL
from deeplab_jax.data.features import segmentation_features
from deeplab_jax.errors import DatasetError

_CITATION = """\
@article{Everingham10,
  author = {Everingham, M. and Van~Gool, L. and Williams, C. K. I. and Winn, J.
            and Zisserman, A.},
  title = {The Pascal Visual Object Classes (VOC) Challenge},
  journal = {International Journal of Computer Vision},
  volume = {88}, number = {2}, pages = {303--338}, year = {2010}}
@inproceedings{BharathICCV2011,
  author = {Bharath Hariharan and Pablo Arbelaez and Lubomir Bourdev and
            Subhransu Maji and Jitendra Malik},
  title = {Semantic Contours from Inverse Detectors},
  booktitle = {ICCV}, year = {2011}}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put one of these in the manual directory (--config.data.manual_dir=DIR):
  * {voc.VOC_TAR} (from {voc.VOC_URL}), or
  * an extracted VOCdevkit/ folder holding VOC2012/{{JPEGImages,
    SegmentationClass,ImageSets/Segmentation}}.
For the voc2012_aug config also one of:
  * {voc.SBD_TAR} (from {voc.SBD_URL}), or
  * an extracted benchmark_RELEASE/ folder holding dataset/{{cls,train.txt,
    val.txt}}.
"""

ALLOWED_MASK_VALUES = frozenset(range(voc.NUM_CLASSES)) | {IGNORE_LABEL}


class VocSegmentationConfig(tfds.core.BuilderConfig):
  """voc2012 (VOC only) or voc2012_aug (VOC + SBD train_aug)."""

  def __init__(self, *, with_sbd: bool, **kwargs):
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.with_sbd = with_sbd


def _find_dir(root: epath.Path, relative: str) -> epath.Path | None:
  """root/relative, root/*/relative, or root itself if it ends that way."""
  parts = relative.split('/')
  candidates = [root / relative]
  if root.exists() and root.is_dir():
    candidates += [child / relative for child in root.iterdir()
                   if child.is_dir()]
  for n in range(1, len(parts)):  # root already is VOCdevkit or VOC2012.
    if root.name == parts[n - 1]:
      candidates.append(root.joinpath(*parts[n:]))
  for candidate in candidates:
    if candidate.is_dir():
      return candidate
  return None


def locate_voc_root(directory: epath.PathLike) -> epath.Path | None:
  """The VOC2012 folder (holding JPEGImages/) under `directory`, if any."""
  found = _find_dir(epath.Path(directory), 'VOCdevkit/VOC2012')
  if found is None and (epath.Path(directory) / 'JPEGImages').is_dir():
    found = epath.Path(directory)
  return found if found and (found / 'JPEGImages').is_dir() else None


def locate_sbd_root(directory: epath.PathLike) -> epath.Path | None:
  """The SBD dataset folder (holding cls/) under `directory`, if any."""
  found = _find_dir(epath.Path(directory), 'benchmark_RELEASE/dataset')
  return found if found and (found / 'cls').is_dir() else None


def check_manual_dir(manual_dir: epath.PathLike, with_sbd: bool) -> None:
  """Raises DatasetError unless manual_dir holds what the build needs."""
  path = epath.Path(manual_dir)
  if not path.is_dir():
    raise DatasetError(
        f'The manual directory {manual_dir} does not exist.\n'
        f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')
  has_voc = (path / voc.VOC_TAR).exists() or locate_voc_root(path)
  has_sbd = (path / voc.SBD_TAR).exists() or locate_sbd_root(path)
  missing = []
  if not has_voc:
    missing.append(f'{voc.VOC_TAR} or VOCdevkit/VOC2012/')
  if with_sbd and not has_sbd:
    missing.append(f'{voc.SBD_TAR} or benchmark_RELEASE/dataset/')
  if missing:
    raise DatasetError(
        f'The manual directory {manual_dir} lacks {" and ".join(missing)}.\n'
        f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')


def _read_ids(path: epath.Path) -> list[str]:
  if not path.exists():
    raise DatasetError(f'{path} is missing: the VOC/SBD folder is incomplete.')
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


def read_sbd_mask(path: epath.Path) -> np.ndarray:
  """Class ids ([H, W] uint8) from an SBD `cls/<id>.mat` file."""
  with path.open('rb') as f:
    mat = scipy.io.loadmat(f, struct_as_record=False, squeeze_me=True)
  return np.asarray(mat['GTcls'].Segmentation, dtype=np.uint8)


def _png_bytes(mask: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(mask, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def check_mask_values(mask: np.ndarray, name: str) -> None:
  """Raises DatasetError naming the file and its values outside 0..20, 255."""
  stray = sorted(set(np.unique(mask).tolist()) - ALLOWED_MASK_VALUES)
  if stray:
    raise DatasetError(
        f'{name} holds label values {stray} outside 0..20 and 255 (ignore). '
        'VOC masks must be palette PNGs of class ids: check that the file '
        'was not converted to RGB or re-coloured, then rebuild.')


class VocSegmentation(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 semantic segmentation, optionally with SBD train_aug."""

  BUILDER_CONFIGS = [
      VocSegmentationConfig(
          name='voc2012', with_sbd=False,
          description='VOC 2012 segmentation: train 1,464, validation 1,449.'),
      VocSegmentationConfig(
          name='voc2012_aug', with_sbd=True,
          description='train_aug: VOC train + SBD minus VOC val (10,582); '
          'validation 1,449.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='PASCAL VOC 2012 semantic segmentation (21 classes).',
        features=segmentation_features('jpeg'),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_source(self, dl_manager) -> epath.Path | None:
    try:
      manual = epath.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS: the manual dir does not exist.
      return None
    return manual if manual.is_dir() else None

  def _locate(self, dl_manager) -> tuple[epath.Path, epath.Path | None]:
    """(VOC2012 folder, SBD dataset folder or None)."""
    with_sbd = self.builder_config.with_sbd
    manual = self._manual_source(dl_manager)
    if manual is not None:
      check_manual_dir(manual, with_sbd)
      voc_root = locate_voc_root(manual)
      if voc_root is None:
        voc_root = locate_voc_root(dl_manager.extract(manual / voc.VOC_TAR))
      sbd_root = None
      if with_sbd:
        sbd_root = locate_sbd_root(manual)
        if sbd_root is None:
          sbd_root = locate_sbd_root(dl_manager.extract(manual / voc.SBD_TAR))
    else:
      urls = {'voc': voc.VOC_URL}
      if with_sbd:
        urls['sbd'] = voc.SBD_URL
      try:
        paths = dl_manager.download_and_extract(urls)
      except Exception as e:  # pylint: disable=broad-except
        raise DatasetError(
            f'Could not download PASCAL VOC ({e}). If this machine is '
            'offline, fetch the files elsewhere and point '
            f'--config.data.manual_dir at them.\n'
            f'{MANUAL_DOWNLOAD_INSTRUCTIONS}') from e
      voc_root = locate_voc_root(paths['voc'])
      sbd_root = locate_sbd_root(paths['sbd']) if with_sbd else None
    if voc_root is None or (with_sbd and sbd_root is None):
      raise DatasetError(
          'The VOC archive does not hold VOCdevkit/VOC2012/JPEGImages (or '
          'the SBD archive has no benchmark_RELEASE/dataset/cls).\n'
          f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return voc_root, sbd_root

  def _split_generators(self, dl_manager):
    voc_root, sbd_root = self._locate(dl_manager)
    sets = voc_root / 'ImageSets' / 'Segmentation'
    voc_train = _read_ids(sets / 'train.txt')
    voc_val = _read_ids(sets / 'val.txt')
    train: list[tuple[str, str]] = [(i, 'voc') for i in voc_train]
    if sbd_root is not None:
      excluded = set(voc_val) | set(voc_train)
      sbd_ids = (_read_ids(sbd_root / 'train.txt') +
                 _read_ids(sbd_root / 'val.txt'))
      seen = set()
      for i in sbd_ids:
        if i not in excluded and i not in seen:
          seen.add(i)
          # Prefer the official VOC mask (with its 255 boundary band).
          has_voc_mask = (voc_root / 'SegmentationClass' / f'{i}.png').exists()
          train.append((i, 'voc' if has_voc_mask else 'sbd'))
    return {
        'train': self._generate_examples(train, voc_root, sbd_root, 'train'),
        'validation': self._generate_examples(
            [(i, 'voc') for i in voc_val], voc_root, sbd_root, 'validation'),
    }

  def _generate_examples(self, ids, voc_root, sbd_root, split
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    skipped: list[str] = []
    for file_id, mask_source in ids:
      example, problem = _load_example(file_id, mask_source, voc_root,
                                       sbd_root)
      if problem is not None:
        logging.warning('Skipping %s', problem)
        skipped.append(problem)
        continue
      yield file_id, example
    total = len(ids)
    if skipped:
      logging.warning('%s/%s: skipped %d of %d examples:\n  %s',
                      self.builder_config.name, split, len(skipped), total,
                      '\n  '.join(skipped))
    else:
      logging.info('%s/%s: all %d examples written.',
                   self.builder_config.name, split, total)
    self.info.metadata[f'skipped_{split}'] = skipped


def _load_example(file_id: str, mask_source: str, voc_root: epath.Path,
                  sbd_root: epath.Path | None
                  ) -> tuple[dict[str, Any] | None, str | None]:
  """(example, None), or (None, why it is skipped)."""
  image_path = voc_root / 'JPEGImages' / f'{file_id}.jpg'
  if not image_path.exists() and sbd_root is not None:
    image_path = sbd_root / 'img' / f'{file_id}.jpg'
  if mask_source == 'voc':
    mask_path = voc_root / 'SegmentationClass' / f'{file_id}.png'
  else:
    mask_path = sbd_root / 'cls' / f'{file_id}.mat'
  try:
    image_bytes = image_path.read_bytes()
    # Decodes fully (a truncated or corrupt JPEG fails here), as displayed.
    image, _ = images.open_image(image_bytes)
    with image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as e:
    return None, f'{image_path}: unreadable image ({e})'
  try:
    if mask_source == 'voc':
      mask = voc.read_mask(mask_path.read_bytes())
    else:
      mask = read_sbd_mask(mask_path)
  except (OSError, SyntaxError, ValueError, KeyError, AttributeError) as e:
    return None, f'{mask_path}: unreadable mask ({e})'
  if mask.shape != (height, width):
    return None, (f'{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but '
                  f'its image is {width}x{height}')
  check_mask_values(mask, os.fspath(mask_path))
  return {
      'image': io.BytesIO(image_bytes),
      'segmentation_mask': io.BytesIO(_png_bytes(mask)),
      'file_name': f'{file_id}.jpg',
  }, None
