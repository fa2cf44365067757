"""What main.py runs for each --mode, after validating the config."""

from __future__ import annotations

import ast
import difflib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging
from flax import nnx

from deeplab_jax import checkpoints, evaluate, export, predict, train
from deeplab_jax.config import default_config, validate_config
from deeplab_jax.data import datasets, pipeline
from deeplab_jax.errors import EXIT_STOPPED, CheckpointError, ConfigError
from deeplab_jax.models import create_model, format_summary
from deeplab_jax.weights import pretrained
from deeplab_jax.weights.common import unset_arrays


def _require_workdir(mode: str, workdir: str | None) -> str:
  if not workdir:
    raise ConfigError(f'--mode={mode} needs --workdir=DIR (where checkpoints '
                      'and results live).')
  return os.path.abspath(os.path.expanduser(workdir))


def ensure_writable(directory: str, flag: str, why: str = '') -> None:
  """ConfigError before any work when `directory` cannot be written."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, '.write_test')
    with open(probe, 'w', encoding='utf-8'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'Cannot write to {directory} ({e.strerror}): pass a '
                      f'writable {flag}' + (f' ({why})' if why else '') +
                      '.') from None


def inference_model(config: Any, workdir: str | None
                    ) -> tuple[nnx.Module, int | None]:
  """The model for eval/predict, at config.eval.output_stride: from the
  newest checkpoint in workdir (parameters and BatchNorm statistics only),
  else from config.train.init_from."""
  has_checkpoints = False
  if workdir and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    has_checkpoints = checkpointer.latest_step() is not None
    checkpointer.close()
  if has_checkpoints:
    model, step = checkpoints.restore_model(config, workdir)
    print(f'Using step {step} (checkpoint: '
          f'{os.path.join(workdir, "checkpoints", str(step))})', flush=True)
    return model, step
  if config.train.init_from:
    source = config.train.init_from
    weights = pretrained.read_init_weights(source, config)
    build = lambda: create_model(config.model,  # noqa: E731
                                 output_stride=config.eval.output_stride)
    # Shapes only, for the file to fill: initialising a random model first
    # took 9 of predict's 14 s with the official 257 model on two cores.
    model = nnx.eval_shape(build)
    report = pretrained.copy_into_model(model, weights)
    unset = unset_arrays(model)
    if unset:  # E.g. a classifier for other classes: random, and said so.
      logging.warning(
          '%s fills %d arrays of this model but not %d others (first: %s): '
          'those keep their random initialisation.', source,
          report['loaded'], len(unset), unset[0])
      model = build()
      report = pretrained.copy_into_model(model, weights)
    print(f'Using weights from {source} ({report["loaded"]} arrays).',
          flush=True)
    return model, None
  raise CheckpointError(
      f'No checkpoint in {workdir}/checkpoints and no '
      'config.train.init_from: train first, or use a pretrained config '
      '(see README, "Pretrained models").')


_NONE_WORDS = ('None', 'none', 'null')


def split_literal_overrides(argv: Sequence[str]
                            ) -> tuple[list[str], dict[str, Any]]:
  """(argv without them, {dotted key: value}) for the overrides that
  ml_collections' flag parser refuses: `--config.KEY=None` and list-valued
  keys given as a JSON or Python literal."""
  schema = default_config()
  rest, literals = [], {}
  for arg in argv:
    if arg.startswith('--config.') and '=' in arg:
      dotted, text = arg[len('--config.'):].split('=', 1)
      node = schema
      for part in dotted.split('.'):
        node = node.get(part) if isinstance(
            node, ml_collections.ConfigDict) else None
      if text.strip() in _NONE_WORDS:
        literals[dotted] = None
        continue
      if isinstance(node, list) or _takes_any(schema, dotted):
        if not isinstance(node, list) and not text.strip()[:1] in '[({':
          literals[dotted] = text  # A name, e.g. inverse_frequency.
          continue
        try:
          literals[dotted] = json.loads(text)
        except ValueError:
          try:
            literals[dotted] = ast.literal_eval(text)
          except (ValueError, SyntaxError) as e:
            raise ConfigError(
                f'{arg}: config.{dotted} takes a list, written as JSON or a '
                f"Python literal, e.g. --config.{dotted}='[{{\"kernel\": 3, "
                f'"rate": [1, 6], "op": "conv", "input": -1}}]\' ({e}).'
            ) from None
        continue
    rest.append(arg)
  return rest, literals


def _takes_any(schema: Any, dotted: str) -> bool:
  """Whether config.<dotted> is a key of any type (a list or a name)."""
  *parents, last = dotted.split('.')
  node = schema
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) \
        else None
  return (isinstance(node, ml_collections.ConfigDict) and last in node and
          node.get_type(last) is object)


def apply_literal_overrides(config: Any, literals: dict[str, Any]) -> None:
  """Sets the values `split_literal_overrides` took out of argv."""
  for dotted, value in literals.items():
    *parents, last = dotted.split('.')
    node = config
    for part in parents:
      node = node[part]
    if last not in node:
      raise ConfigError(diagnose_override([f'--config.{dotted}=x']) or
                        f'Unknown config key config.{dotted}.')
    try:
      node[last] = value
    except TypeError as e:
      raise ConfigError(
          f'--config.{dotted}={value!r}: config.{dotted} cannot take it '
          f'({e}); None is allowed only for optional keys.') from None


def diagnose_override(argv: Sequence[str]) -> str | None:
  """Why a `--config.<key>=<value>` flag failed to apply, if it can tell.

  ml_collections raises a bare AttributeError for an unknown key; this walks
  the schema to name the key, a close match, and the known keys.
  """
  schema = default_config()
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    dotted = arg[len('--config.'):].split('=', 1)[0]
    node, prefix = schema, 'config'
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        break
      if part not in node:
        known = list(node.keys())
        close = difflib.get_close_matches(part, known, n=1)
        hint = f" Did you mean '{prefix}.{close[0]}'?" if close else ''
        return (f"Unknown config key '{prefix}.{part}' in {arg}.{hint} Known "
                f'keys of {prefix}: {", ".join(sorted(known))}.')
      node, prefix = node[part], f'{prefix}.{part}'
    if '=' in arg and isinstance(node, (bool, int, float, str, tuple)):
      value = arg.split('=', 1)[1]
      return (f'{arg}: cannot use {value!r} for {prefix}, which takes a '
              f'{type(node).__name__} (default {node!r}).')
  return None


def run(config: Any, *, mode: str, workdir: str | None = None,
        images: str | None = None, output: str | None = None,
        follow: bool = False, export_format: str = 'tflite',
        recursive: bool = False) -> Any:
  validate_config(config)
  if config.model.num_classes == 0 and mode != 'prepare':
    datasets.resolve_num_classes(config)  # 0: the dataset's.
  if mode == 'summary':
    # Counts need shapes only: abstract arrays, no initialisation (the
    # Xception-65 summary took 12 s of compiling initialisers).
    model = nnx.eval_shape(lambda: create_model(config.model))
    print(format_summary(model, depth=1))
    print()
    print(format_summary(model.backbone, depth=1).replace(
        'module', 'backbone', 1))
    return None
  if mode == 'prepare':
    builder = pipeline.prepare_dataset(config.data)
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f'{config.data.dataset} is ready in {builder.data_dir}: {sizes}')
    return sizes
  if mode in ('train', 'eval'):
    datasets.check_num_classes(config)
  if mode == 'train':
    workdir = _require_workdir(mode, workdir)
    start = time.time()
    result = train.train(config, workdir)
    logging.info('Training ended: %s', result)
    minutes = (time.time() - start) / 60
    if result.get('stopped'):
      line = (f'Stopped by {result["stopped"]} at step '
              f'{result["final_step"]} of {result["num_steps"]} after '
              f'{minutes:.1f} min; checkpoint saved in {workdir}/checkpoints. '
              f'Run the same command to resume (exit code '
              f'{EXIT_STOPPED}: stopped, resumable).')
    else:
      line = (f'Trained to step {result["final_step"]} in {minutes:.1f} '
              f'min; checkpoints in {workdir}/checkpoints.')
    if 'eval' in result:
      e = result['eval']
      others = ''.join(
          f'; the {v["weights"]} weights: mIoU {v["miou"]:.4f} in '
          f'{workdir}/eval/{v["weights"]}' for k, v in result.items()
          if k.startswith('eval_'))
      which = f' ({e["weights"]} weights)' if others else ''
      line += (f' Eval at step {e["step"]}{which}: mIoU {e["miou"]:.4f}, '
               f'pixel accuracy {e["pixel_accuracy"]:.4f} on {e["images"]} '
               f'images ({workdir}/eval/metrics.json, images in '
               f'{workdir}/eval/images){others}.')
    print(line, flush=True)
    return result
  if mode == 'eval':
    workdir = _require_workdir(mode, workdir)
    results = os.path.abspath(output or os.path.join(workdir, 'eval'))
    if not follow:  # --follow creates nothing before a checkpoint appears.
      ensure_writable(results, '--output=DIR for the results' if not output
                      else '--output', why='the checkpoints are only read')
    if follow:
      return evaluate.follow(config, workdir, out_dir=results)
    if config.eval.runtime != 'jax':  # An exported file: no model.
      model, step = None, None
      print(f'Evaluating {config.eval.model_file} under '
            f'{config.eval.runtime}.', flush=True)
    else:
      model, step = inference_model(config, workdir)
    summary = evaluate.evaluate(config, model, out_dir=results, step=step)
    print(f'mIoU {summary["miou"]:.4f}, pixel accuracy '
          f'{summary["pixel_accuracy"]:.4f} on {summary["images"]} images '
          f'in {summary["seconds"]:.1f} s; written to '
          f'{results}/metrics.json')
    return summary
  if mode == 'predict':
    if not images:
      raise ConfigError('--mode=predict needs --images=DIR (a folder of '
                        'photos, one image, or a glob).')
    output = output or os.path.join(workdir or '.', 'predictions')
    # Before the model's setup.
    predict.check_folders(images, output, recursive)
    if config.eval.runtime != 'jax':  # An exported file: no model.
      model = None
      print(f'Segmenting with {config.eval.model_file} under '
            f'{config.eval.runtime}.', flush=True)
    else:
      model, _ = inference_model(config, workdir)
    summary = predict.predict_folder(config, model, images, output,
                                     recursive=recursive)
    print(f'Segmented {summary["images"]} image(s) into {output}'
          + (f'; skipped {len(summary["skipped"])}' if summary['skipped']
             else ''))
    return summary
  if mode == 'export':
    suffix = export.get_exporter(export_format).suffix  # Before the model.
    name = f'model_os{config.eval.output_stride}{suffix}'
    output = output or os.path.join(workdir or '.', 'export', name)
    if os.path.exists(output):
      raise ConfigError(f'{output} exists: pass another --output, or delete '
                        'it first (exports never overwrite).')
    ensure_writable(os.path.dirname(os.path.abspath(output)), '--output')
    model, _ = inference_model(config, workdir)
    start = time.time()
    export.export(model, config, export_format, output)
    size = (os.path.getsize(output) if os.path.isfile(output) else sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(output) for f in files))
    print(f'Exported {export_format} to {output} ({size / 2**20:.1f} MiB, '
          f'{time.time() - start:.1f} s).', flush=True)
    if export_format == 'tflite_int8':  # What quantisation cost, measured.
      r = int8_report(model, config, output)
      print(f'mIoU on {r["images"]} {r["split"]} images: float '
            f'{r["float_miou"]:.4f}, int8 {r["int8_miou"]:.4f} '
            f'({output}.json).', flush=True)
    return output
  raise ConfigError(f'Unknown --mode={mode}.')


def int8_report(model: Any, config: Any, path: str) -> dict[str, Any]:
  """Scores the Flax model and its int8 file `path` with the same eval code
  (one scale, no flips, images fitted to the export's input) on the eval
  split (`eval.max_images` of it; the file was calibrated on
  `export.calibration_split`), and writes the figures to PATH.json."""
  c = config.copy_and_resolve_references()
  c.eval.scales, c.eval.flip = (1.0,), False
  c.eval.input_scale, c.eval.mode = 'fit', 'whole'
  c.eval.crop_size = export.serving.input_size(config)[0]
  c.eval.num_result_images = 0
  evaluator = evaluate.Evaluator(c)
  float_summary = evaluator.evaluate(model, workdir=None)
  c.eval.runtime, c.eval.model_file = 'litert', path
  c.export.include_preprocessing = True
  int8_summary = evaluate.evaluate(c, None, workdir=None)
  report = {
      'file': os.path.basename(path), 'bytes': os.path.getsize(path),
      'calibration_images': config.export.calibration_images,
      'calibration_split': config.export.calibration_split,
      'dataset': c.data.dataset, 'split': int8_summary['split'],
      'images': int8_summary['images'],
      'float_miou': float_summary['miou'], 'int8_miou': int8_summary['miou'],
      'float_pixel_accuracy': float_summary['pixel_accuracy'],
      'int8_pixel_accuracy': int8_summary['pixel_accuracy'],
  }
  with open(path + '.json', 'w') as f:
    json.dump(report, f, indent=2)
  return report
