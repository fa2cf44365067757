"""Input pipelines: TFDS array_record files read with `tfds.data_source` and
grain, with no TensorFlow at read time.

* `prepare_dataset` builds a dataset once (download or manual files).
* `train_loader`: shuffled, infinite, sharded per JAX process, augmented in
  grain worker processes, batched; deterministic given the seed (grain gives
  each record a random generator derived from the seed and its index), and
  its iterator state can be saved and restored to resume at the exact next
  batch.
* `eval_loader`: every example once, in order, padded (never cropped).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import re
import shutil
import signal
import sys
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from array_record.python import array_record_module
from etils import epath

from deeplab_jax import distributed
from deeplab_jax.data import augment
from deeplab_jax.data.datasets import (DatasetSpec, check_download_hosts,
                                       check_manual_dir, dataset_spec)
from deeplab_jax.errors import ConfigError, DatasetError
from deeplab_jax.inference.policy import InferencePolicy
from deeplab_jax.inference.segmenter import whole_canvas
from deeplab_jax.models import backbones
from deeplab_jax.models.backbones import Preprocessing


def _dataset_error_in_chain(error: BaseException) -> DatasetError | None:
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, DatasetError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def reprepare_hint(data_config: Any) -> str:
  """How to prepare a dataset again, for messages."""
  return (f'prepare {data_config.dataset} again: add '
          '--config.data.reprepare=True to the command (or run it with '
          '--mode=prepare --config.data.reprepare=True first)')


@contextlib.contextmanager
def _preparing(builder: tfds.core.DatasetBuilder):
  """One preparation of a dataset at a time (an flock beside its
  versions), so that the leftovers of a killed one, TFDS's `incomplete.*`
  folders, can be removed safely."""
  root = epath.Path(builder.data_dir).parent  # <data_dir>/<name>/<config>.
  root.mkdir(parents=True, exist_ok=True)
  with open(root / '.prepare.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    stale = [p for p in root.iterdir() if p.name.startswith('incomplete.')]
    for path in stale:
      shutil.rmtree(path, ignore_errors=True)
    if stale:
      print(f'Removed {len(stale)} unfinished preparation(s) of '
            f'{builder.name} left by a stopped run: '
            f'{", ".join(p.name for p in stale)}.', flush=True)
    yield


def prepare_dataset(data_config: Any) -> tfds.core.DatasetBuilder:
  """Builds the dataset's array_record files unless they already exist
  (`data_config.reprepare`: builds them again).

  VOC comes from `data_config.manual_dir` (tars or extracted folders) or is
  downloaded; the demo dataset is generated.

  Raises:
    DatasetError: missing or wrong manual_dir, download failure, bad masks.
  """
  spec = dataset_spec(data_config)
  manual_dir = data_config.manual_dir
  check_manual_dir(spec, manual_dir)
  builder = tfds.builder(spec.tfds_name, data_dir=data_config.data_dir,
                         file_format='array_record', **spec.builder_kwargs)
  if data_config.reprepare and builder.is_prepared():
    print(f'config.data.reprepare: removing {builder.data_dir} to prepare '
          f'{data_config.dataset} again.', flush=True)
    shutil.rmtree(builder.data_dir)
    builder = tfds.builder(spec.tfds_name, data_dir=data_config.data_dir,
                           file_format='array_record', **spec.builder_kwargs)
  if builder.is_prepared():
    return builder
  if spec.builder_kwargs:
    _say_if_changed(builder)
  if not manual_dir and spec.downloads:
    check_download_hosts(spec, data_config.dataset)
  with _preparing(builder):
    _download_and_prepare(builder, data_config, manual_dir)
  return builder


def _download_and_prepare(builder, data_config: Any, manual_dir) -> None:
  if builder.is_prepared():  # Another process prepared it meanwhile.
    return
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
  except Exception as e:  # pylint: disable=broad-except
    found = _dataset_error_in_chain(e)
    if found is not None:
      raise found from None
    if 'Failed to finalize writing of split' in str(e):
      # TFDS's own words when a split got no example at all.
      raise DatasetError(
          f'{data_config.dataset}: a split came out empty ({e}): every file '
          'it lists was missing or unreadable (the warnings above name '
          'them). Check config.data.'
          f'{"folder" if data_config.dataset == "folder" else "manual_dir"}.'
      ) from None
    raise


def _say_if_changed(builder: tfds.core.DatasetBuilder) -> None:
  """One line when the same folder was prepared before with other files
  or options (its config name's fingerprint changed)."""
  name = builder.builder_config.name
  stem = name.rsplit('_', 1)[0]
  root = epath.Path(builder.data_dir).parent.parent  # <data_dir>/<builder>.
  older = sorted(
      p.name for p in root.iterdir() if p.name != name and
      re.fullmatch(re.escape(stem) + r'_[0-9a-f]{12}', p.name)
  ) if root.is_dir() else []
  if older:
    print(f'The folder {builder.builder_config.folder} changed since it was '
          f'prepared as {older[-1]} (files, classes, splits or options): '
          f'preparing it again as {name}.', flush=True)


def check_prepared(builder: tfds.core.DatasetBuilder, data_config: Any,
                   split: str) -> None:
  """DatasetError naming the file when a prepared array_record file of
  `split` holds fewer records than TFDS wrote (truncated, damaged), and
  how to prepare it again. Reads each file's index only."""
  for name in split.split('+'):
    info = builder.info.splits[name.split('[')[0]]
    for path, length in zip(info.filepaths, info.shard_lengths):
      try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        found = reader.num_records()
        reader.close()
        problem = None if found == length else (
            f'{found} of its {length} records readable')
      except (OSError, RuntimeError, ValueError) as e:
        problem = f'{type(e).__name__}: {str(e)[:200]}'
      if problem:
        raise DatasetError(f'The prepared file {path} is damaged ({problem}):'
                           f' {reprepare_hint(data_config)}.')


class CheckedSource:
  """A data source whose unreadable record stops with a DatasetError that
  names the split's files and how to prepare them again (array_record's
  own error names neither)."""

  def __init__(self, source: Any, files: list[str], hint: str):
    self._source, self._files, self._hint = source, files, hint

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    # grain keeps the source's repr in the data iterator's checkpoint and
    # checks it on restore: it must not change between runs.
    return repr(self._source)

  def _error(self, error: Exception) -> DatasetError:
    return DatasetError(
        f'A prepared file of this split is damaged ({type(error).__name__}: '
        f'{str(error).splitlines()[0][:160]}; files: '
        f'{", ".join(self._files)}): {self._hint}.')

  def __getitem__(self, index):
    try:
      return self._source[index]
    except (RuntimeError, OSError) as e:
      raise self._error(e) from None

  def __getitems__(self, indices):
    try:
      return self._source.__getitems__(indices)
    except (RuntimeError, OSError) as e:
      raise self._error(e) from None


def data_source(data_config: Any, split: str):
  """Random-access source of raw examples (encoded image and mask bytes);
  a damaged prepared file is one DatasetError (`check_prepared`,
  `CheckedSource`)."""
  builder = prepare_dataset(data_config)
  for name in split.split('+'):  # TFDS split expressions: 'train+validation'.
    if name.split('[')[0] not in builder.info.splits:
      raise DatasetError(
          f'{data_config.dataset} has no split {name!r}; it has '
          f'{", ".join(builder.info.splits)}.')
  check_prepared(builder, data_config, split)
  source = tfds.data_source(
      dataset_spec(data_config).tfds_name, split=split,
      data_dir=data_config.data_dir, download=False,
      builder_kwargs=dataset_spec(data_config).builder_kwargs or None,
      decoders={
          'image': tfds.decode.SkipDecoding(),
          'segmentation_mask': tfds.decode.SkipDecoding()
      })
  files = [os.fspath(p) for name in split.split('+')
           for p in builder.info.splits[name.split('[')[0]].filepaths]
  return CheckedSource(source, files, reprepare_hint(data_config))


def inverse_frequency_weights(data_config: Any, source: Any,
                              num_classes: int) -> np.ndarray:
  """[num_classes] float32 loss weights, median frequency balancing:
  median(f) / f_c over the classes present, f_c = class c's share of the
  labelled pixels of `source` (ignored pixels not counted); absent classes
  get 0 (no pixel of theirs is ever weighted). Reads every mask once."""
  spec = dataset_spec(data_config)
  counts = np.zeros(num_classes, np.int64)
  for i in range(len(source)):
    mask = spec.map_labels(augment.decode_mask(source[i]['segmentation_mask']))
    values = mask[mask != spec.ignore_label].astype(np.int64)
    counts += np.bincount(values, minlength=num_classes)[:num_classes]
  present = counts > 0
  if not present.any():
    raise DatasetError(f'{data_config.dataset}: the training masks hold no '
                       'labelled pixel; class weights cannot be computed.')
  frequency = counts / counts.sum()
  weights = np.zeros(num_classes, np.float32)
  weights[present] = np.median(frequency[present]) / frequency[present]
  return weights


# Most grain workers 'auto' starts (each holds a copy of the pipeline).
MAX_AUTO_WORKERS = 32


def resolve_workers(num_workers: int) -> int:
  """Grain worker processes for `config.data.num_workers`: itself, or for
  -1 ('auto') from this process's cores: with an accelerator all but one
  (at most MAX_AUTO_WORKERS), since a GPU trains on hundreds of 513 crops a
  second and one core augments about 80; on a CPU, whose train step keeps
  every core busy at a few images a second, one (none on a single core)."""
  if num_workers >= 0:
    return num_workers
  cores = distributed.available_cores()
  if jax.default_backend() == 'cpu':
    return 1 if cores > 1 else 0
  return max(0, min(cores - 1, MAX_AUTO_WORKERS))


def _loader(source, sampler, operations, shard_options, worker_count: int,
            buffer_size: int) -> grain.DataLoader:
  if worker_count > 0:
    # grain reads absl flags in its worker processes; outside an absl app
    # (tests, notebooks) they would be unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations,
      worker_count=worker_count, worker_buffer_size=buffer_size,
      shard_options=shard_options)


_ARMED_PID: int | None = None


def die_with_parent() -> None:
  """In a grain worker process: leave Ctrl-C to the parent, and ask Linux
  to kill the worker when its parent dies.

  Ctrl-C reaches every process of the terminal's group: the workers printed
  KeyboardInterrupt tracebacks while the parent saved its checkpoint; the
  parent stops them. A training run killed with SIGKILL cannot stop its
  workers itself; without this they outlived it (holding memory and
  shared-memory segments). Called from the transforms, so it runs once in
  each worker; a no-op in the main process.
  """
  global _ARMED_PID
  if _ARMED_PID == os.getpid():
    return
  _ARMED_PID = os.getpid()
  if multiprocessing.parent_process() is None:
    return
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if not sys.platform.startswith('linux'):
    return
  pr_set_pdeathsig = 1
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
  if os.getppid() == 1:  # The parent died before the request: follow it.
    os._exit(1)  # pylint: disable=protected-access


def _file_name(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class TrainAugment(grain.transforms.RandomMap):
  """Decode + random scale, crop, flip + normalise (see `augment`)."""

  def __init__(self, *, dataset: DatasetSpec, preprocessing: Preprocessing,
               crop_size: int, min_scale: float, max_scale: float,
               scale_step: float, flip: bool):
    self.dataset = dataset
    self.preprocessing = preprocessing
    self.crop_size = crop_size
    self.min_scale, self.max_scale, self.scale_step = (min_scale, max_scale,
                                                       scale_step)
    self.flip = flip

  def random_map(self, element: dict[str, Any], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    die_with_parent()
    image = augment.decode_image(element['image'])
    mask = self.dataset.map_labels(
        augment.decode_mask(element['segmentation_mask']))
    image, label = augment.random_scale_crop_flip(
        image, mask, rng, crop_size=self.crop_size,
        preprocessing=self.preprocessing, min_scale=self.min_scale,
        max_scale=self.max_scale, scale_step=self.scale_step,
        ignore_label=self.dataset.ignore_label, flip=self.flip)
    return {'image': image, 'label': label}


class EvalPad(grain.transforms.Map):
  """Decode + prepare for `config.eval`'s inference policy; keeps size and
  file name.

  'image' is the normalised float32 canvas for whole mode (the image
  scaled by `eval.input_scale` and padded; 'valid' is the scaled image's
  (h, w) in it), or the uint8 image itself for slide mode (the segmenter
  scales and tiles it); 'label' keeps the image's own size. An image whole
  mode cannot take has 'mode' 'refused' and the reason in 'reason'.
  """

  def __init__(self, *, dataset: DatasetSpec, preprocessing: Preprocessing,
               policy: InferencePolicy):
    self.dataset = dataset
    self.preprocessing = preprocessing
    self.policy = policy

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    die_with_parent()
    image = np.asarray(augment.decode_image(element['image']))
    mask = self.dataset.map_labels(
        augment.decode_mask(element['segmentation_mask']))
    height, width = mask.shape
    reason = ''
    try:
      mode = self.policy.choose(height, width)
    except ConfigError as e:
      mode, reason = 'refused', str(e)
    if image.shape[:2] != (height, width):
      mode, reason = 'refused', (
          f'{_file_name(element["file_name"])}: the image is '
          f'{image.shape[1]}x{image.shape[0]} but its mask {width}x{height}; '
          'prepare the dataset again (--config.data.reprepare=True)')
    if mode == 'whole':
      image, valid = whole_canvas(self.policy, self.preprocessing, image)
    else:
      valid = self.policy.scaled_size(height, width)
    return {
        'image': image,
        'label': mask,
        'mode': mode,
        'reason': reason,
        'height': np.int32(height),
        'width': np.int32(width),
        'valid': np.asarray(valid, np.int32),
        'file_name': _file_name(element['file_name']),
    }


def train_loader(config: Any, *, batch_size: int | None = None,
                 seed: int | None = None, source=None,
                 shard_options: grain.sharding.ShardOptions | None = None,
                 worker_count: int | None = None) -> grain.DataLoader:
  """The infinite, shuffled, augmented training stream of this process.

  Args:
    config: the full config (data, train, seed).
    batch_size: per-process batch; default config.train.batch_size /
      jax.process_count().
    seed: shuffling and augmentation seed; default config.seed.
    source: a random-access source (tests); default the config's train split.
    shard_options: default: this JAX process's shard.
    worker_count: grain worker processes; default config.data.num_workers.

  Returns:
    A grain DataLoader yielding {'image': [B, crop, crop, 3] float32,
    normalised as the backbone says, 'label': [B, crop, crop] uint8}.
  """
  d = config.data
  if batch_size is None:
    batch_size = config.train.batch_size // jax.process_count()
  if source is None:
    source = data_source(d, d.train_split)
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True,
      num_epochs=None, seed=config.seed if seed is None else seed)
  operations = [
      TrainAugment(dataset=dataset_spec(d),
                   preprocessing=backbones.preprocessing(config.model),
                   crop_size=d.crop_size, min_scale=d.min_scale,
                   max_scale=d.max_scale, scale_step=d.scale_step,
                   flip=d.random_flip),
      grain.transforms.Batch(batch_size, drop_remainder=True),
  ]
  return _loader(source, sampler, operations, shard_options,
                 resolve_workers(d.num_workers) if worker_count is None
                 else worker_count, d.prefetch_batches)


def eval_loader(config: Any, *, split: str | None = None, source=None,
                shard_options: grain.sharding.ShardOptions | None = None,
                worker_count: int | None = None) -> grain.DataLoader:
  """Every example of the eval split once, in order, prepared for the
  inference policy (`EvalPad`), unbatched."""
  d = config.data
  if source is None:
    source = data_source(d, split or d.eval_split)
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=False)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=False,
      num_epochs=1, seed=0)
  operations = [EvalPad(dataset=dataset_spec(d),
                        preprocessing=backbones.preprocessing(config.model),
                        policy=InferencePolicy.from_config(config))]
  return _loader(source, sampler, operations, shard_options,
                 resolve_workers(d.num_workers) if worker_count is None
                 else worker_count, d.prefetch_batches)
