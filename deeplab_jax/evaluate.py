"""Evaluation: confusion-matrix mIoU, per-class IoU, pixel accuracy.

Runs at `config.eval.output_stride` on whole images padded to
`config.eval.crop_size` (padding is labelled ignore, so it never counts),
single-scale or multi-scale with flips (`config.eval.scales`, `.flip`).
Writes `<workdir>/eval/metrics.json`, `confusion_matrix.png` and result
images (image | ground truth | prediction | overlay) for the first
`config.eval.num_result_images` images.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from PIL import Image

from deeplab_jax import distributed, inference, metrics, visualize
from deeplab_jax.data import augment, pipeline
from deeplab_jax.errors import CheckpointError
from deeplab_jax.models import inference_view


class Progress:
  """A one-line progress report for evaluation and prediction."""

  def __init__(self, what: str, total: int | None, every_seconds: float = 5):
    self.what, self.total = what, total
    self.every = every_seconds
    self.start = self.last = time.perf_counter()
    self.done = 0

  def update(self, count: int = 1) -> None:
    self.done += count
    now = time.perf_counter()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      total = f'/{self.total}' if self.total else ''
      print(f'\r{self.what}: {self.done}{total} images ({rate:.1f}/s)',
            end='' if self.done != self.total else '\n', file=sys.stderr,
            flush=True)

  def close(self) -> None:
    if self.total is None or self.done != self.total:
      print(file=sys.stderr, flush=True)


def batches_by_shape(examples: Iterator[dict[str, Any]], batch_size: int
                     ) -> Iterator[list[dict[str, Any]]]:
  """Groups consecutive examples of equal (padded) image shape into lists."""
  group: list[dict[str, Any]] = []
  for example in examples:
    if group and (len(group) == batch_size or
                  example['image'].shape != group[0]['image'].shape):
      yield group
      group = []
    group.append(example)
  if group:
    yield group


def _stack(group: list[dict[str, Any]], batch_size: int, ignore_label: int,
           with_labels: bool = True):
  """Images (and labels) of a group, padded with all-ignore examples."""
  images = np.stack([e['image'] for e in group])
  missing = batch_size - len(group)
  if missing:
    images = np.concatenate([images, np.zeros((missing,) + images.shape[1:],
                                              images.dtype)])
  if not with_labels:
    return images, None
  labels = np.stack([e['label'] for e in group])
  if missing:
    labels = np.concatenate([labels, np.full((missing,) + labels.shape[1:],
                                             ignore_label, labels.dtype)])
  return images, labels


def make_eval_step(model: nnx.Module, config: ml_collections.ConfigDict,
                   num_classes: int):
  """Jitted functions over this process's devices:

  step(images, labels) -> (predictions uint8, confusion) for padded images;
  probabilities(images) -> [N, H, W, C] for `eval.resize_to_crop`.
  """
  graphdef, state = nnx.split(inference_view(model))
  mesh = distributed.make_mesh(jax.local_devices())
  data = distributed.data_sharding(mesh)
  state = jax.device_put(state, distributed.replicated(mesh))
  scales = tuple(float(s) for s in config.eval.scales)

  def predict(state, images):
    return inference.predict_probabilities(
        nnx.merge(graphdef, state), images, scales=scales,
        flip=config.eval.flip)

  @functools.partial(jax.jit, in_shardings=(None, data, data))
  def step(state, images, labels):
    predictions = jnp.argmax(predict(state, images), axis=-1)
    confusion = metrics.confusion_matrix(predictions, labels, num_classes,
                                         config.data.ignore_label)
    return predictions.astype(jnp.uint8), confusion

  probabilities = jax.jit(predict, in_shardings=(None, data))
  return (lambda images, labels: step(state, images, labels),
          lambda images: probabilities(state, images), mesh)


def evaluate(config: ml_collections.ConfigDict, model: nnx.Module, *,
             workdir: str | None, step: int | None = None,
             writer: Any | None = None,
             split: str | None = None, source=None) -> dict[str, Any]:
  """Evaluates `model` (built for the eval output stride) on the eval split.

  `writer` is a clu MetricWriter for TensorBoard scalars (optional).

  Returns:
    {'miou', 'per_class_iou' (by class name), 'pixel_accuracy', 'images',
     'step', ...}; also written to <workdir>/eval/metrics.json.
  """
  spec = pipeline.dataset_spec(config.data.dataset)
  class_names = spec.class_names
  num_classes = config.model.num_classes
  if len(class_names) != num_classes:
    class_names = tuple(f'class_{i}' for i in range(num_classes))
  eval_step, probabilities_fn, mesh = make_eval_step(model, config,
                                                     num_classes)
  resize = config.eval.resize_to_crop
  local_devices = mesh.devices.size
  batch_size = -(-config.eval.batch_size // local_devices) * local_devices
  if source is None:
    source = pipeline.data_source(config.data, split or config.data.eval_split)
  examples = iter(pipeline.eval_loader(config, source=source))
  limit = config.eval.max_images
  total = len(source) if limit is None else min(limit, len(source))
  total_local = -(-total // jax.process_count())

  out_dir = epath.Path(workdir) / 'eval' if workdir else None
  image_dir = out_dir / 'images' if out_dir else None
  if image_dir is not None and jax.process_index() == 0:
    image_dir.mkdir(parents=True, exist_ok=True)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  seen = 0
  progress = Progress('eval', total_local)
  for group in batches_by_shape(examples, batch_size):
    if limit is not None and seen >= total_local:
      break
    group = group[:max(0, total_local - seen)] if limit is not None else group
    images, labels = _stack(group, batch_size, config.data.ignore_label,
                            with_labels=not resize)
    if resize:  # Score at the original resolution, on the host.
      probabilities = np.asarray(probabilities_fn(images))
      predictions = []
      for example, probs in zip(group, probabilities):
        prediction = inference.to_original_size(
            probs, example['valid'], example['label'].shape)
        confusion += metrics.confusion_matrix_numpy(
            prediction, example['label'], num_classes,
            config.data.ignore_label)
        predictions.append(prediction)
    else:
      predictions, batch_confusion = eval_step(images, labels)
      confusion += np.asarray(batch_confusion, np.int64)
      predictions = np.asarray(predictions)
    if image_dir is not None and jax.process_index() == 0:
      _save_results(group, predictions, image_dir, seen,
                    config.eval.num_result_images)
    seen += len(group)
    progress.update(len(group))
  progress.close()
  if jax.process_count() > 1:
    confusion = np.asarray(
        multihost_utils.process_allgather(confusion)).sum(axis=0)
    seen = int(np.asarray(multihost_utils.process_allgather(
        np.int64(seen))).sum())

  summary = metrics.summarize(confusion, class_names)
  summary.update(
      images=seen, step=step, dataset=config.data.dataset,
      split=split or config.data.eval_split,
      output_stride=config.eval.output_stride,
      scales=[float(s) for s in config.eval.scales], flip=config.eval.flip,
      confusion_matrix=confusion.tolist())
  logging.info('eval step %s: mIoU %.4f, pixel accuracy %.4f on %d images',
               step, summary['miou'], summary['pixel_accuracy'], seen)
  if out_dir is not None and jax.process_index() == 0:
    (out_dir / 'metrics.json').write_text(json.dumps(summary, indent=2))
    if step is not None:
      (out_dir / f'metrics_{step}.json').write_text(
          json.dumps(summary, indent=2))
    visualize.confusion_figure(confusion, class_names).savefig(
        str(out_dir / 'confusion_matrix.png'), dpi=100)
  if writer is not None and step is not None:
    scalars = {'eval/miou': summary['miou'],
               'eval/pixel_accuracy': summary['pixel_accuracy']}
    scalars.update({f'eval/iou/{name}': value
                    for name, value in summary['per_class_iou'].items()
                    if value is not None})
    writer.write_scalars(step, scalars)
  return summary


def _save_results(group, predictions, image_dir, first: int,
                  limit: int) -> None:
  for offset, example in enumerate(group):
    index = first + offset
    if index >= limit:
      return
    h, w = int(example['height']), int(example['width'])
    vh, vw = (int(v) for v in example['valid'])
    image = augment.denormalize(example['image'][:vh, :vw])
    if (vh, vw) != (h, w):  # Resized input: show it at the original size.
      image = np.asarray(Image.fromarray(image).resize((w, h),
                                                       Image.BILINEAR))
    panel = visualize.result_panel(image, example['label'][:h, :w],
                                   predictions[offset][:h, :w])
    stem = epath.Path(example['file_name']).stem
    visualize.save_png(panel, image_dir / f'{index:04d}_{stem}.png')


def evaluate_state(config, trainer, workdir, *, step, writer=None):
  """Evaluates a Trainer's current state (used during training)."""
  model = trainer.model(output_stride=config.eval.output_stride)
  return evaluate(config, model, workdir=workdir, step=step, writer=writer)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        step: int | None = None,
                        writer: Any | None = None
                        ) -> dict[str, Any]:
  """Evaluates the checkpoint at `step` (default: the newest) of workdir."""
  from deeplab_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
  step = step if step is not None else checkpointer.latest_step()
  if step is None:
    raise CheckpointError(
        f'No checkpoint in {checkpointer.directory}: train first with '
        f'--workdir={workdir}, or point --workdir at a training run.')
  trainer = train.Trainer(config, config.train.num_steps,
                          distributed.make_mesh(jax.local_devices()))
  trainer.state = checkpointer.restore(step, trainer.abstract_state())
  print(f'Evaluating step {step} (checkpoint: {checkpointer.path(step)})',
        flush=True)
  return evaluate_state(config, trainer, workdir, step=step, writer=writer)


def follow(config: ml_collections.ConfigDict, workdir: str, *,
           poll_seconds: float = 30.0, timeout_seconds: float | None = None
           ) -> dict[str, Any] | None:
  """Evaluates every new checkpoint as training writes it, until the final
  step (or `timeout_seconds` without a new one)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from deeplab_jax import checkpoints  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
  writer = metric_writers.create_default_writer(
      str(epath.Path(workdir) / 'eval'), just_logging=jax.process_index() > 0)
  from deeplab_jax import train  # pylint: disable=g-import-not-at-top
  done, summary, waited = set(), None, 0.0
  final = train.num_train_steps(config, len(pipeline.data_source(
      config.data, config.data.train_split)))
  while True:
    latest = checkpointer.latest_step()
    if latest is not None and latest not in done:
      summary = evaluate_checkpoint(config, workdir, step=latest,
                                    writer=writer)
      done.add(latest)
      waited = 0.0
      if latest >= final:
        return summary
    elif timeout_seconds is not None and waited >= timeout_seconds:
      return summary
    time.sleep(poll_seconds)
    waited += poll_seconds
