"""Datasets by name: `config.data.dataset` -> the facts the code needs.

A `DatasetSpec` owns its class names, palette, ignore label and raw-label
mapping; the pipeline, the loss and metrics, evaluation's pictures and
`metrics.json`, predict and the notebook take them from here.

Adding a dataset: a TFDS builder module in `deeplab_jax/data/` (storing
array_record, features 'image', 'segmentation_mask', 'file_name'), one
line in `DATASETS` (a `DatasetSpec`, or a function of `config.data` that
returns one, as the folder dataset's), and its tests in `tests/data/`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from deeplab_jax.data import (ade20k_builder, cityscapes_builder, demo_builder,
                              folder_builder, voc, voc_builder)
from deeplab_jax.data.labels import IGNORE_LABEL, bit_interleaved_palette
from deeplab_jax.errors import ConfigError, DatasetError
from deeplab_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the rest of the code needs to know about a dataset.

  Attributes:
    tfds_name: 'builder/config' name of its TFDS builder.
    class_names: one name per class id 0..num_classes-1.
    palette: [256, 3] uint8 RGB colour per label value (the ignore label's
      colour included), for masks and pictures.
    ignore_label: the label value that is never trained on or scored.
    label_map: None, or a [256] uint8 lookup from stored mask values to
      class ids (e.g. Cityscapes' ids -> train ids), applied on reading.
    check_manual_dir: None, or f(manual_dir) raising DatasetError when the
      manually downloaded files are missing (before a long build starts).
    downloads: whether the builder can fetch its files itself.
    download_urls: the files it fetches (checked for a reachable host
      before a download starts, so that offline use fails at once).
    builder_kwargs: passed to `tfds.builder` (e.g. a BuilderConfig built
      from config.data).
  """
  tfds_name: str
  class_names: tuple[str, ...]
  palette: np.ndarray = dataclasses.field(repr=False, compare=False)
  ignore_label: int = IGNORE_LABEL
  label_map: np.ndarray | None = dataclasses.field(default=None, repr=False,
                                                   compare=False)
  check_manual_dir: Callable[[str], None] | None = None
  downloads: bool = True
  download_urls: tuple[str, ...] = ()
  builder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict,
                                                     compare=False)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def map_labels(self, mask: np.ndarray) -> np.ndarray:
    """Stored mask values -> class ids (identity without a label_map)."""
    return mask if self.label_map is None else self.label_map[mask]


DATASETS: Registry[DatasetSpec | Callable[[Any], DatasetSpec]] = Registry(
    'dataset', 'config.data.dataset', {
    'voc2012': DatasetSpec(
        'voc_segmentation/voc2012', voc.CLASS_NAMES, voc.color_map(),
        check_manual_dir=functools.partial(voc_builder.check_manual_dir,
                                           with_sbd=False),
        download_urls=(voc.VOC_URL,)),
    'voc2012_aug': DatasetSpec(
        'voc_segmentation/voc2012_aug', voc.CLASS_NAMES, voc.color_map(),
        check_manual_dir=functools.partial(voc_builder.check_manual_dir,
                                           with_sbd=True),
        download_urls=(voc.VOC_URL, voc.SBD_URL)),
    'demo': DatasetSpec('deeplab_demo_shapes', demo_builder.CLASS_NAMES,
                        demo_builder.PALETTE, downloads=False),
    'cityscapes': DatasetSpec(
        cityscapes_builder.DeeplabCityscapes.name,
        cityscapes_builder.CLASS_NAMES, cityscapes_builder.PALETTE,
        label_map=cityscapes_builder.label_map(),
        check_manual_dir=cityscapes_builder.check_manual_dir,
        downloads=False),
    'ade20k': DatasetSpec(
        ade20k_builder.DeeplabAde20k.name, ade20k_builder.CLASS_NAMES,
        bit_interleaved_palette(), label_map=ade20k_builder.label_map(),
        check_manual_dir=ade20k_builder.check_manual_dir,
        download_urls=(ade20k_builder.URL,)),
    'folder': lambda data: folder_spec(
        data.folder, data.mask_format, data.val_fraction,
        folder_builder.listing_stamp(data.folder)),
    }, error=DatasetError)


def dataset_spec(data: Any) -> DatasetSpec:
  """The registered dataset of `config.data` (or of a name, for datasets
  that need no options); DatasetError naming the known ones."""
  name = data if isinstance(data, str) else data.dataset
  entry = DATASETS.lookup(name)
  if isinstance(entry, DatasetSpec):
    return entry
  if isinstance(data, str):
    raise DatasetError(f'The {name} dataset is configured by config.data: '
                       'pass config.data, not its name.')
  return entry(data)


@functools.lru_cache(maxsize=8)
def folder_spec(folder: str | None, mask_format: str, val_fraction: float,
                stamp: tuple[int, ...] = ()) -> DatasetSpec:
  """The spec of a folder dataset (deeplab_jax/data/folder_builder.py):
  its classes from classes.csv or classes.txt (or, for `ids` masks
  without either, the ids found, named class_<i>, with a warning).

  Cached per `stamp` (folder_builder.listing_stamp), so a notebook that
  adds files to the folder gets a new spec, not a stale one."""
  del stamp  # Only the cache key.
  if mask_format not in folder_builder.MASK_FORMATS:
    raise ConfigError(
        f'config.data.mask_format = {mask_format!r}: use one of '
        f'{", ".join(folder_builder.MASK_FORMATS)}.')
  files = folder_builder.list_files(folder)
  classes = folder_builder.read_classes(folder, mask_format)
  if classes is None:
    count = folder_builder.scan_class_ids(files, mask_format)
    classes = folder_builder.FolderClasses(
        tuple(f'class_{i}' for i in range(max(count, 2))))
    logging.warning(
        'No classes.txt or classes.csv in %s: %d classes from the ids '
        'found in its masks, named class_<i>. Add classes.txt (line i names '
        'class i) to name them.', folder, len(classes.names))
  config = folder_builder.FolderConfig(
      folder=os.fspath(os.path.expanduser(folder)), mask_format=mask_format,
      val_fraction=val_fraction, class_names=classes.names,
      fingerprint=files.fingerprint())
  return DatasetSpec(folder_builder.FolderSegmentation.name,
                     classes.names, classes.palette(), downloads=False,
                     builder_kwargs={'config': config})


def check_manual_dir(spec: DatasetSpec, manual_dir: str | None) -> None:
  """The spec's own check of a manual directory, if it has one."""
  if manual_dir and spec.check_manual_dir is not None:
    spec.check_manual_dir(os.path.expanduser(manual_dir))


def check_download_hosts(spec: DatasetSpec, name: str) -> None:
  """DatasetError at once when a download host does not resolve (offline),
  instead of the download manager's minutes of retries."""
  for url in spec.download_urls:
    host = urllib.parse.urlparse(url).hostname
    try:
      socket.getaddrinfo(host, None)
    except OSError as e:
      raise DatasetError(
          f'{name}: cannot reach {host} to download {url} ({e}); offline? '
          'Fetch the files elsewhere, put them in a folder and pass '
          '--config.data.manual_dir=DIR.') from None


def resolve_num_classes(config: Any) -> None:
  """config.model.num_classes = 0 means the dataset's: set it (in place)."""
  if config.model.num_classes == 0:
    config.model.num_classes = dataset_spec(config.data).num_classes
    logging.info('config.model.num_classes = %d (from %s)',
                 config.model.num_classes, config.data.dataset)


def check_num_classes(config: Any) -> None:
  """ConfigError unless config.model.num_classes fits config.data.dataset."""
  spec = dataset_spec(config.data)
  if config.model.num_classes != spec.num_classes:
    raise ConfigError(
        f'config.model.num_classes = {config.model.num_classes}, but '
        f'{config.data.dataset} has {spec.num_classes} classes '
        f'({", ".join(spec.class_names)}): set '
        f'--config.model.num_classes={spec.num_classes}.')


def class_names(config: Any) -> tuple[str, ...]:
  """The dataset's class names, or `class_<i>` when the model predicts
  another number of classes (a model fine-tuned elsewhere)."""
  names = dataset_spec(config.data).class_names
  if len(names) != config.model.num_classes:
    return tuple(f'class_{i}' for i in range(config.model.num_classes))
  return names
