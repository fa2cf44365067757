"""Evaluation: confusion-matrix mIoU, per-class IoU, pixel accuracy.

Runs at `config.eval.output_stride` under the inference policy of
`config.eval` (deeplab_jax/inference/policy.py: input scale, whole or
sliding window), single-scale or multi-scale with flips (`config.eval.scales`,
`.flip`), and scores every labelled pixel at the image's own size.
Writes `<workdir>/eval/metrics.json`, `confusion_matrix.png` and result
images (image | ground truth | prediction | overlay, in the dataset's
palette) for the first `config.eval.num_result_images` images.

`Evaluator` is built once per (model structure, eval config) and owns its
jitted functions; `train.py` calls it during training (never the reverse)
and `follow` reuses one for every checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from PIL import Image

from deeplab_jax import (checkpoints, distributed, metric_writers, metrics,
                         optim, visualize, workdir_lock)
from deeplab_jax.compile_stats import CompileCounter
from deeplab_jax.data import pipeline
from deeplab_jax.data.datasets import class_names, dataset_spec
from deeplab_jax.errors import CheckpointError, ConfigError
from deeplab_jax.inference import blend
from deeplab_jax.inference.segmenter import Segmenter
from deeplab_jax.progress import Progress
from deeplab_jax.models import backbones, create_model, fold_batch_norm


def write_atomically(path: epath.Path, text: str) -> None:
  """`path` gets `text` whole or not at all (a reader never sees half a
  metrics file): written beside it, then renamed over it."""
  temporary = path.parent / f'.{path.name}.{os.getpid()}.tmp'
  temporary.write_text(text)
  os.replace(temporary, path)


class Evaluator:
  """Evaluation for one model structure and eval config, compiled once.

  Built from the config (the model at `config.eval.output_stride`, the
  eval scales and flips, the dataset's classes and ignore label), it owns
  its jitted functions: evaluating new weights (the next checkpoint, the
  next in-training evaluation) reuses them and compiles nothing new for
  image shapes it has seen. In the big_vision way:
  `Evaluator(config).evaluate(weights, workdir=...)`.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.dataset = dataset_spec(config.data)
    self.class_names = class_names(config)
    self.num_classes = config.model.num_classes
    self.mesh = distributed.make_mesh(jax.local_devices())
    self._replicated = distributed.replicated(self.mesh)

  @functools.cached_property
  def segmenter(self) -> Segmenter:
    """Runs the inference policy (whole canvases sharded over the local
    devices); an exported file's runtime when `eval.runtime` is not jax."""
    if self.config.eval.runtime != 'jax':
      return Segmenter(self.config)
    return Segmenter(self.config, self.graphdef, mesh=self.mesh)

  @functools.cached_property
  def _abstract_model(self) -> nnx.Module:
    """The model at `config.eval.output_stride`, shapes only, as trained
    (its weights are what `evaluate` is given).

    Built on first use (tracing the model's construction takes a moment):
    a training run whose first evaluation is far off, or never comes,
    does not wait for it at start-up.
    """
    return nnx.eval_shape(lambda: create_model(
        self.config.model, output_stride=self.config.eval.output_stride))

  @functools.cached_property
  def _trained_graphdef(self) -> nnx.GraphDef:
    return nnx.graphdef(self._abstract_model)

  @functools.cached_property
  def graphdef(self) -> nnx.GraphDef:
    """The evaluated model's structure: the inference copy with BatchNorm
    folded into the convolutions (`inference.folded`)."""
    return nnx.graphdef(nnx.eval_shape(fold_batch_norm, self._abstract_model))

  @functools.cached_property
  def _fold(self) -> Callable[[tuple[Any, ...]], Any]:
    """Weight states -> the folded model's state, compiled once per
    Evaluator: new weights (the next checkpoint) fold without compiling."""
    def fold(states):
      return nnx.state(fold_batch_norm(nnx.merge(self._trained_graphdef,
                                                 *states)))
    return jax.jit(fold, out_shardings=self._replicated)

  def _states(self, weights: Any) -> Any:
    """The segmenter's weights: the folded model's replicated state, from
    a model or a tuple of nnx.States (e.g. (params, batch_stats))."""
    if weights is None:  # eval.runtime: the exported file has them.
      return None
    states = ((nnx.state(weights),) if isinstance(weights, nnx.Module)
              else tuple(weights))
    return self.segmenter.bind(
        self._fold(jax.device_put(states, self._replicated)))

  def evaluate(self, weights: Any, *, workdir: str | None = None,
               step: int | None = None, writer: Any | None = None,
               split: str | None = None, source=None,
               out_dir: str | None = None, tag: str = 'eval'
               ) -> dict[str, Any]:
    """Evaluates `weights` on the eval split.

    Args:
      weights: a model of this config (any output stride), or a tuple of
        its nnx.States (e.g. (params, batch_stats) of a train state).
      workdir: metrics.json, the confusion matrix and result images go to
        <workdir>/eval/ (None: nothing is written)...
      out_dir: ... or to this folder instead (eval of a read-only run).
      tag: the TensorBoard scalars' prefix.
      step: the training step, for the record and TensorBoard.
      writer: a metric_writers.MetricWriter for TensorBoard (optional).
      split, source: another split, or a random-access source (tests).

    Returns:
      {'miou', 'per_class_iou' (by class name), 'pixel_accuracy', 'images',
       'step', 'seconds', 'compiles' (functions traced anew: 0 once every
       image shape has been seen), 'compile_seconds', 'engine' (XLA or
       LiteRT: eval.cpu_runtime), ...}; also written to
       <workdir>/eval/metrics.json.
    """
    if out_dir is None and workdir:
      out_dir = os.path.join(workdir, 'eval')
    with CompileCounter() as compiles:
      summary = self._evaluate(weights, out_dir=out_dir, step=step,
                               split=split, source=source)
    summary.update(compiles=compiles.lowerings,
                   compile_seconds=round(compiles.compile_seconds, 3),
                   engine=self.segmenter.engine())
    logging.info('eval step %s: mIoU %.4f, pixel accuracy %.4f on %d images '
                 'in %.1f s (%d new compilations, %.1f s compiling; %s)',
                 step, summary['miou'], summary['pixel_accuracy'],
                 summary['images'], summary['seconds'], summary['compiles'],
                 summary['compile_seconds'], summary['engine'])
    out_dir = epath.Path(out_dir) if out_dir else None
    if out_dir is not None and jax.process_index() == 0:
      out_dir.mkdir(parents=True, exist_ok=True)
      text = json.dumps(summary, indent=2)
      write_atomically(out_dir / 'metrics.json', text)
      if step is not None:
        write_atomically(out_dir / f'metrics_{step}.json', text)
      visualize.confusion_figure(
          np.asarray(summary['confusion_matrix']), self.class_names).savefig(
              str(out_dir / 'confusion_matrix.png'), dpi=100)
    if writer is not None and step is not None:
      scalars = {f'{tag}/miou': summary['miou'],
                 f'{tag}/pixel_accuracy': summary['pixel_accuracy']}
      scalars.update({f'{tag}/iou/{name}': value
                      for name, value in summary['per_class_iou'].items()
                      if value is not None})
      writer.write_scalars(step, scalars)
    return summary

  def _evaluate(self, weights: Any, *, out_dir: str | None,
                step: int | None, split: str | None, source
                ) -> dict[str, Any]:
    config = self.config
    start = time.perf_counter()
    segmenter = self.segmenter
    states = self._states(weights)
    ignore_label = self.dataset.ignore_label
    num_classes = self.num_classes
    local_devices = self.mesh.devices.size
    batch_size = -(-config.eval.batch_size // local_devices) * local_devices
    if source is None:
      source = pipeline.data_source(config.data,
                                    split or config.data.eval_split)
    examples = iter(pipeline.eval_loader(config, source=source))
    limit = config.eval.max_images
    total = len(source) if limit is None else min(limit, len(source))
    total_local = -(-total // jax.process_count())

    image_dir = epath.Path(out_dir) / 'images' if out_dir else None
    if image_dir is not None and jax.process_index() == 0:
      image_dir.mkdir(parents=True, exist_ok=True)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    modes = {'whole': 0, 'slide': 0}
    seen = 0
    progress = Progress('eval', total_local)

    def score(example, prediction):
      nonlocal seen, confusion
      confusion += metrics.confusion_matrix_numpy(
          prediction, example['label'], num_classes, ignore_label)
      if image_dir is not None and jax.process_index() == 0:
        self._save_result(example, prediction, image_dir, seen)
      modes[example['mode']] += 1
      seen += 1
      progress.update()

    pending: list[dict[str, Any]] = []

    def whole_batch(canvas_shape) -> int:
      """Images per whole-mode call: eval.batch_size, fewer for large
      canvases (at most eval.max_whole_pixels pixels a call, as one image
      may have), a multiple of the local devices."""
      fits = config.eval.max_whole_pixels // max(
          1, segmenter.policy.whole_pixels(*canvas_shape[:2]))
      count = max(1, min(batch_size, fits))
      return -(-count // local_devices) * local_devices

    def run_pending():
      if not pending:
        return
      canvases = np.stack([e['image'] for e in pending])
      missing = whole_batch(canvases.shape[1:]) - len(pending)
      if missing:
        canvases = np.concatenate(
            [canvases, np.zeros((missing,) + canvases.shape[1:],
                                canvases.dtype)])
      grids = segmenter.whole_grids(states, canvases)
      for index, example in enumerate(pending):
        size = (int(example['height']), int(example['width']))
        views = segmenter.whole_views(grids, index, canvases.shape[1:3],
                                      tuple(example['valid']), size)
        score(example, blend.finish(views, *size, num_classes)[0])
      pending.clear()

    try:
      for example in examples:
        if seen + len(pending) >= total_local:
          break
        if example['mode'] == 'refused':
          raise ConfigError(example['reason'])
        if example['mode'] == 'whole':
          if pending and (example['image'].shape != pending[0]['image'].shape
                          or len(pending) == whole_batch(
                              pending[0]['image'].shape)):
            run_pending()
          pending.append(example)
          continue
        run_pending()
        result = segmenter.segment(states, example['image'],
                                   name=example['file_name'])
        score(example, result.classes)
      run_pending()
    finally:  # A failure stops the workers before its message.
      distributed.close_iterator(examples)
    progress.close()
    if jax.process_count() > 1:
      confusion = np.asarray(
          multihost_utils.process_allgather(confusion)).sum(axis=0)
      seen = int(np.asarray(multihost_utils.process_allgather(
          np.int64(seen))).sum())

    summary = metrics.summarize(confusion, self.class_names)
    summary.update(
        images=seen, step=step, dataset=config.data.dataset,
        split=split or config.data.eval_split,
        output_stride=config.eval.output_stride,
        scales=[float(s) for s in config.eval.scales], flip=config.eval.flip,
        input_scale=config.eval.input_scale, modes=modes,
        seconds=round(time.perf_counter() - start, 3),
        confusion_matrix=confusion.tolist())
    return summary

  def _save_result(self, example, prediction, image_dir, index: int
                   ) -> None:
    """image | ground truth | prediction | overlay of the first
    `eval.num_result_images` images."""
    if index >= self.config.eval.num_result_images:
      return
    h, w = int(example['height']), int(example['width'])
    image = example['image']
    if example['mode'] == 'whole':  # The canvas: its scaled image, shown
      vh, vw = (int(v) for v in example['valid'])  # at the original size.
      image = backbones.preprocessing(self.config.model).denormalize(
          image[:vh, :vw])
      if (vh, vw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h),
                                                         Image.BILINEAR))
    panel = visualize.result_panel(image, example['label'], prediction,
                                   palette=self.dataset.palette)
    stem = epath.Path(example['file_name']).stem
    visualize.save_png(panel, image_dir / f'{index:04d}_{stem}.png')


def evaluate(config: ml_collections.ConfigDict, weights: Any, **kwargs
             ) -> dict[str, Any]:
  """One evaluation with a new Evaluator (see `Evaluator.evaluate`); to
  evaluate several weights, build one Evaluator and reuse it."""
  return Evaluator(config).evaluate(weights, **kwargs)


def follow(config: ml_collections.ConfigDict, workdir: str, *,
           poll_seconds: float | None = None,
           timeout_seconds: float | None = None,
           out_dir: str | None = None) -> dict[str, Any] | None:
  """Evaluates every checkpoint training writes, in order (only the newest
  new one at each look with `config.eval.follow_newest_only`), until the
  final step, or until no new checkpoint came for `timeout_seconds`
  (default `config.eval.follow_timeout`). One Evaluator serves every
  checkpoint: only the first compiles. One follower per results folder
  (`<out_dir>/follow.lock`); it creates nothing before a checkpoint
  appears.

  Raises:
    CheckpointError: no checkpoint appeared within the timeout (a mistyped
      --workdir, or training never started), or another follower writes
      to the same folder.
  """
  e = config.eval
  timeout = e.follow_timeout if timeout_seconds is None else timeout_seconds
  poll = e.follow_poll_seconds if poll_seconds is None else poll_seconds
  directory = epath.Path(workdir) / 'checkpoints'
  out_dir = epath.Path(out_dir or epath.Path(workdir) / 'eval')
  final = optim.num_train_steps(config.train, len(pipeline.data_source(
      config.data, config.data.train_split)))
  print(f'Following {directory}: evaluating '
        f'{"the newest new checkpoint" if e.follow_newest_only else "every checkpoint"}'
        f' until step {final}, results in {out_dir}; stopping after '
        f'{timeout:.0f} s without a new one (config.eval.follow_timeout).',
        flush=True)
  evaluator, writer, checkpointer = None, None, None
  lock = contextlib.ExitStack()
  done, summary, waited = set(), None, 0.0
  try:
    while True:
      if checkpointer is None and directory.is_dir():
        checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
      steps = checkpointer.all_steps() if checkpointer else []
      last = max(done) if done else -1
      new = [s for s in steps if s > last]
      if e.follow_newest_only:
        new = new[-1:]
      if new:
        if evaluator is None:
          out_dir.mkdir(parents=True, exist_ok=True)
          lock.enter_context(workdir_lock.WorkdirLock(
              out_dir, lock_file='follow.lock', what='evaluated',
              instead='pass another --output for this follower\'s results'))
          evaluator = Evaluator(config)
          writer = metric_writers.MetricWriter(
              out_dir, just_logging=jax.process_index() > 0)
        for step in new:
          try:
            model, _ = checkpoints.restore_model(config, workdir, step=step)
          except CheckpointError as error:
            if step in checkpointer.all_steps():
              raise
            print(f'Step {step} was deleted (train.keep_checkpoints) before '
                  f'it could be evaluated: {str(error)[:120]}', flush=True)
            done.add(step)
            continue
          print(f'Evaluating step {step} (checkpoint: '
                f'{checkpointer.path(step)})', flush=True)
          summary = evaluator.evaluate(model, out_dir=str(out_dir),
                                       step=step, writer=writer)
          done.add(step)
        waited = 0.0
        if max(done) >= final:
          return summary
      elif waited >= timeout:
        if summary is None:
          raise CheckpointError(
              f'No checkpoint appeared in {directory} within {timeout:.0f} s '
              '(config.eval.follow_timeout). Is --workdir the training '
              "run's workdir, and is training running?")
        print(f'No new checkpoint for {timeout:.0f} s after step '
              f'{max(done)}; stopping.', flush=True)
        return summary
      time.sleep(poll)
      waited += poll
  finally:
    if writer is not None:
      writer.close()
    if checkpointer is not None:
      checkpointer.close()
    lock.close()
