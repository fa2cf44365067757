"""What main.py runs for each --mode, after validating the config."""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging

from deeplab_jax.config import validate_config
from deeplab_jax.errors import CheckpointError, ConfigError


def _require_workdir(mode: str, workdir: str | None) -> str:
  if not workdir:
    raise ConfigError(f'--mode={mode} needs --workdir=DIR (where checkpoints '
                      'and results live).')
  return os.path.abspath(os.path.expanduser(workdir))


def inference_model(config: Any, workdir: str | None):
  """The model for eval/predict, at config.eval.output_stride: from the
  newest checkpoint in workdir, else from config.train.init_from."""
  from deeplab_jax import checkpoints, distributed, train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(config, config.train.num_steps,
                          distributed.make_mesh(jax.local_devices()))
  step = None
  checkpointer = None
  if workdir and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    step = checkpointer.latest_step()
  if step is not None:
    trainer.state = checkpointer.restore(step, trainer.abstract_state())
    print(f'Using step {step} (checkpoint: {checkpointer.path(step)})',
          flush=True)
  elif config.train.init_from:
    report = trainer.load_weights(config.train.init_from, 'model')
    print(f'Using weights from {config.train.init_from} '
          f'({report["loaded"]} arrays).', flush=True)
  else:
    raise CheckpointError(
        f'No checkpoint in {workdir}/checkpoints and no '
        'config.train.init_from: train first, or use a pretrained config '
        '(see README, "Pretrained models").')
  return trainer.model(output_stride=config.eval.output_stride), step


def run(config: Any, *, mode: str, workdir: str | None = None,
        images: str | None = None, output: str | None = None,
        follow: bool = False) -> Any:
  validate_config(config)
  if mode == 'summary':
    from deeplab_jax.models import create_model, format_summary  # pylint: disable=g-import-not-at-top
    model = create_model(config.model)
    print(format_summary(model, depth=1))
    print()
    print(format_summary(model.backbone, depth=1).replace(
        'module', 'backbone', 1))
    return None
  if mode == 'prepare':
    from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    builder = pipeline.prepare_dataset(config.data)
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f'{config.data.dataset} is ready in {builder.data_dir}: {sizes}')
    return sizes
  if mode in ('train', 'eval'):
    from deeplab_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.check_num_classes(config)
  if mode == 'train':
    from deeplab_jax import train  # pylint: disable=g-import-not-at-top
    workdir = _require_workdir(mode, workdir)
    start = time.time()
    result = train.train(config, workdir)
    logging.info('Training finished: %s', result)
    line = (f'Trained to step {result["final_step"]} in '
            f'{(time.time() - start) / 60:.1f} min; checkpoints in '
            f'{workdir}/checkpoints.')
    if 'eval' in result:
      e = result['eval']
      line += (f' Eval at step {e["step"]}: mIoU {e["miou"]:.4f}, pixel '
               f'accuracy {e["pixel_accuracy"]:.4f} on {e["images"]} images '
               f'({workdir}/eval/metrics.json, images in {workdir}/eval/'
               'images).')
    print(line, flush=True)
    return result
  if mode == 'eval':
    from deeplab_jax import evaluate  # pylint: disable=g-import-not-at-top
    workdir = _require_workdir(mode, workdir)
    if follow:
      return evaluate.follow(config, workdir)
    model, step = inference_model(config, workdir)
    summary = evaluate.evaluate(config, model, workdir=workdir, step=step)
    print(f'mIoU {summary["miou"]:.4f}, pixel accuracy '
          f'{summary["pixel_accuracy"]:.4f} on {summary["images"]} images; '
          f'written to {workdir}/eval/metrics.json')
    return summary
  if mode == 'predict':
    from deeplab_jax import predict  # pylint: disable=g-import-not-at-top
    if not images:
      raise ConfigError('--mode=predict needs --images=DIR (a folder of '
                        'photos).')
    model, _ = inference_model(config, workdir)
    output = output or os.path.join(workdir or '.', 'predictions')
    summary = predict.predict_folder(config, model, images, output)
    print(f'Segmented {summary["images"]} image(s) into {output}'
          + (f'; skipped {len(summary["skipped"])}' if summary['skipped']
             else ''))
    return summary
  raise ConfigError(f'Unknown --mode={mode}.')
