"""The config schema: every key, its reference default, and its validation.

`default_config()` returns the full ml_collections schema with the reference
DeepLab recipe as defaults; every file in `configs/` starts from it and
overrides fields. `validate_config()` is called once at the edge (main.py,
notebooks) and raises `ConfigError` naming the key, the bad value and the
allowed ones, so nothing deeper has to re-check user input.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from deeplab_jax.errors import ConfigError

OUTPUT_STRIDES = (8, 16, 32)
HEAD_TYPES = ('aspp', 'dpc')
DECODER_TYPES = ('deeplabv3plus', 'upsample')
CHANNEL_ROUNDINGS = ('deeplab', 'keras')
DEPTHWISE_IMPLS = ('auto', 'shifted', 'native')
DTYPES = ('float32', 'bfloat16')
OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('poly', 'constant', 'inverse_time', 'cosine')
DPC_OPS = ('conv', 'pyramid_pooling')
# The five-branch Dense Prediction Cell of the DPC paper, as in the seed's
# `encoder_middle_conf` (rates are at output stride 16, before
# `conv_rate_multiplier`).
SEED_DPC_BRANCHES = (
    {'kernel': 3, 'rate': [1, 6], 'op': 'conv', 'input': -1},
    {'kernel': 3, 'rate': [18, 15], 'op': 'conv', 'input': 0},
    {'kernel': 3, 'rate': [6, 3], 'op': 'conv', 'input': 1},
    {'kernel': 3, 'rate': [1, 1], 'op': 'conv', 'input': 0},
    {'kernel': 3, 'rate': [6, 21], 'op': 'conv', 'input': 0},
)


def default_config() -> ml_collections.ConfigDict:
  """The schema: all keys with the reference DeepLabV3+ MobileNetV2 recipe."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  m = c.model
  m.num_classes = 21
  m.output_stride = 16  # Training output stride; eval.output_stride for eval.
  m.dtype = 'float32'  # Compute dtype; parameters always stay float32.
  # 'auto' picks the shifted-sum depthwise conv on CPU, the native one else.
  m.depthwise_impl = 'auto'
  # BatchNorm of the heads and decoder (reference: decay 0.9997, eps 1e-5).
  m.bn_momentum = 0.9997
  m.bn_epsilon = 1e-5
  m.bn_scale = True
  m.classifier_kernel_size = 1
  m.classifier_use_bias = True

  m.backbone = ml_collections.ConfigDict()
  m.backbone.name = 'mobilenet_v2'
  m.backbone.depth_multiplier = 1.0
  # 'deeplab': multiples of 8 only at depth multiplier 1.0 (the reference
  # extractor and its published checkpoints); 'keras': every width rounded to
  # a multiple of 8 (keras.applications.MobileNetV2's alpha).
  m.backbone.channel_rounding = 'deeplab'
  # Slim MobileNetV2 BatchNorm (decay 0.997, eps 1e-3; Keras uses eps 1e-3).
  m.backbone.bn_momentum = 0.997
  m.backbone.bn_epsilon = 1e-3

  m.head = ml_collections.ConfigDict()
  m.head.type = 'aspp'
  m.head.channels = 256  # Channels of every branch (seed: reduction_size).
  m.head.projection_channels = 256  # After concat (seed: concat_channels).
  # ASPP atrous rates at output stride 16; () gives the reference
  # MobileNetV2 head (image pooling + 1x1 only) of the published weights.
  m.head.atrous_rates = (6, 12, 18)
  # Multiplies ASPP and DPC rates. None: 16 / output_stride (x2 at OS 8).
  m.head.conv_rate_multiplier = config_dict.placeholder(int)
  # Channel multiplier of the depthwise convs in separable convs (seed:
  # depth_multiplier).
  m.head.separable_depth_multiplier = 1
  m.head.image_pooling = True
  m.head.dropout_rate = 0.1
  m.head.dropout_on_concat = False
  m.head.dropout_on_projection = True
  # Dense Prediction Cell branches (seed: encoder_middle_conf). Each:
  # kernel (1 or 3), rate [h, w], op ('conv' | 'pyramid_pooling'), input
  # (-1 = backbone features, else an earlier branch); pyramid_pooling also
  # takes grid_size [h, w].
  m.head.dpc_branches = [dict(b) for b in SEED_DPC_BRANCHES]

  m.decoder = ml_collections.ConfigDict()
  m.decoder.type = 'deeplabv3plus'  # or 'upsample' (seed: simple upsampling)
  m.decoder.low_level_channels = 48
  m.decoder.channels = 256

  # ----------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  d = c.data
  d.dataset = 'voc2012'  # TFDS config: voc2012 | voc2012_aug | demo
  d.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None: default.
  d.manual_dir = config_dict.placeholder(str)  # VOC tars or VOCdevkit/.
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.crop_size = 513  # Training crop (seed: image_size).
  d.min_scale = 0.5
  d.max_scale = 2.0
  d.scale_step = 0.25
  d.random_flip = True
  d.ignore_label = 255
  d.num_workers = 2  # grain worker processes per host; 0 = in-process.
  d.prefetch_batches = 4  # Per worker.

  # ---------------------------------------------------------------- train
  c.train = ml_collections.ConfigDict()
  t = c.train
  t.batch_size = 16  # Global batch, split over every device of every host.
  t.num_steps = 30000
  # When set, num_steps = ceil(num_epochs * train examples / batch_size).
  t.num_epochs = config_dict.placeholder(float)
  t.optimizer = 'sgd'
  t.learning_rate = 0.007
  t.momentum = 0.9  # SGD momentum.
  t.adam_b1 = 0.9
  t.adam_b2 = 0.999
  t.adam_eps = 1e-8
  t.lr_schedule = 'poly'
  t.poly_power = 0.9
  t.end_learning_rate = 0.0
  t.warmup_steps = 0
  t.inverse_time_decay = 0.0  # Keras-2 `decay`: lr / (1 + decay * step).
  # Keras ReduceLROnPlateau on the training loss (seed: reduce_lr_factor).
  t.reduce_on_plateau_factor = config_dict.placeholder(float)
  t.reduce_on_plateau_patience = 5  # In accumulation windows.
  # Steps whose mean loss is one plateau measurement (Keras: one epoch).
  t.reduce_on_plateau_accumulation_steps = 1
  t.weight_decay = 4e-5  # L2 on conv kernels (not BatchNorm, not biases).
  t.regularize_depthwise = False  # The reference does not decay them.
  t.top_k_percent_pixels = 1.0  # < 1: hard-pixel mining.
  t.hard_example_mining_step = 0  # Steps over which top-k anneals from 1.
  t.freeze_batch_norm = False  # Use moving statistics (fine-tuning).
  t.bias_lr_multiplier = 2.0  # Reference: conv biases learn 2x faster.
  t.log_every_steps = 50
  t.checkpoint_every_steps = 1000
  t.keep_checkpoints = 3
  t.eval_every_steps = 0  # 0: no evaluation during training.
  # Weights only: a checkpoint dir, 'keras_imagenet', or a pretrained name.
  t.init_from = config_dict.placeholder(str)
  t.init_from_scope = 'backbone'  # 'backbone' | 'model'

  # ----------------------------------------------------------------- eval
  c.eval = ml_collections.ConfigDict()
  e = c.eval
  e.output_stride = 8
  e.crop_size = 513  # Images are padded (never cropped) to at least this.
  # Fixed-input exports (TFLite): resize images to fit crop_size instead,
  # and upsample the predictions to the original size for scoring.
  e.resize_to_crop = False
  e.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  e.flip = True
  e.batch_size = 8
  e.num_result_images = 16
  e.max_images = config_dict.placeholder(int)  # None: the whole split.
  return c


# ------------------------------------------------------------ validation


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f'{key} = {value!r} is not allowed: {allowed}.')


def _check_keys(config: Any, schema: Any, prefix: str) -> None:
  """Raises on keys the schema does not know, recursively."""
  if not isinstance(schema, Mapping) and not isinstance(
      schema, ml_collections.ConfigDict):
    return
  if not isinstance(config, (Mapping, ml_collections.ConfigDict)):
    raise ConfigError(
        f'{prefix} must be a group of settings like {sorted(schema.keys())}, '
        f'not {config!r}.')
  known = list(schema.keys())
  for key in config.keys():
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" Did you mean '{prefix}.{close[0]}'?" if close else ''
      raise ConfigError(
          f"Unknown config key '{prefix}.{key}'.{hint} Known keys of {prefix}: "
          f'{", ".join(sorted(known))}.')
    if key in ('dpc_branches',):
      continue
    _check_keys(config[key], schema[key], f'{prefix}.{key}')


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise _fail(key, value, 'use one of ' + ', '.join(map(repr, allowed)))


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
  if not _is_int(value) or value < minimum:
    raise _fail(key, value, f'use an integer >= {minimum}')


def _number_in(key: str, value: Any, lo: float, hi: float,
               lo_open: bool = False, hi_open: bool = False) -> None:
  ok = _is_number(value)
  if ok:
    ok = (value > lo if lo_open else value >= lo) and (
        value < hi if hi_open else value <= hi)
  if not ok:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    raise _fail(key, value, f'use a number in {lb}{lo}, {hi}{rb}')


def validate_dpc_branches(branches: Any,
                          key: str = 'config.model.head.dpc_branches') -> None:
  """Checks a Dense Prediction Cell spec (the seed's encoder_middle_conf)."""
  if not isinstance(branches, (list, tuple)) or not branches:
    raise _fail(key, branches, 'give a non-empty list of branch dicts')
  required = {'kernel', 'rate', 'op', 'input'}
  for i, b in enumerate(branches):
    k = f'{key}[{i}]'
    if not isinstance(b, (Mapping, ml_collections.ConfigDict)):
      raise _fail(k, b, 'each branch is a dict with keys kernel, rate, op, '
                  'input')
    missing = required - set(b.keys())
    if missing:
      raise ConfigError(f'{k} lacks {", ".join(sorted(missing))}: each branch '
                        'needs kernel, rate, op and input.')
    unknown = set(b.keys()) - required - {'grid_size'}
    if unknown:
      raise ConfigError(f'{k} has unknown keys {sorted(unknown)}: allowed are '
                        'kernel, rate, op, input, grid_size.')
    _one_of(f'{k}.op', b['op'], DPC_OPS)
    if b['op'] == 'conv':
      _one_of(f'{k}.kernel', b['kernel'], (1, 3))
    rate = b['rate']
    if (not isinstance(rate, (list, tuple)) or len(rate) != 2 or
        not all(_is_int(r) and r >= 1 for r in rate)):
      raise _fail(f'{k}.rate', rate, 'use [rate_h, rate_w], two integers >= 1')
    inp = b['input']
    if not _is_int(inp) or inp < -1 or inp >= i:
      raise _fail(
          f'{k}.input', inp,
          f'use -1 (backbone features) or the index of an earlier branch '
          f'(0..{i - 1}); a branch cannot read itself or a later branch'
          if i else 'the first branch must read the backbone features (-1)')
    if b['op'] == 'pyramid_pooling':
      grid = b.get('grid_size')
      if (not isinstance(grid, (list, tuple)) or len(grid) != 2 or
          not all(_is_int(g) and g >= 1 for g in grid)):
        raise _fail(f'{k}.grid_size', grid,
                    'pyramid_pooling needs grid_size [h, w] of integers >= 1')


def validate_model_config(m: Any, key: str = 'config.model') -> None:
  """Checks `config.model` (also used alone, e.g. by the pretrained import)."""
  _positive_int(f'{key}.num_classes', m.num_classes, minimum=2)
  _one_of(f'{key}.output_stride', m.output_stride, OUTPUT_STRIDES)
  _one_of(f'{key}.dtype', m.dtype, DTYPES)
  _one_of(f'{key}.depthwise_impl', m.depthwise_impl, DEPTHWISE_IMPLS)
  _number_in(f'{key}.bn_momentum', m.bn_momentum, 0.0, 1.0)
  _number_in(f'{key}.bn_epsilon', m.bn_epsilon, 0.0, 1.0, lo_open=True)
  _one_of(f'{key}.classifier_kernel_size', m.classifier_kernel_size, (1, 3))
  b = m.backbone
  _one_of(f'{key}.backbone.name', b.name, ('mobilenet_v2',))
  _number_in(f'{key}.backbone.depth_multiplier', b.depth_multiplier, 0.0,
             float('inf'), lo_open=True)
  _one_of(f'{key}.backbone.channel_rounding', b.channel_rounding,
          CHANNEL_ROUNDINGS)
  _number_in(f'{key}.backbone.bn_momentum', b.bn_momentum, 0.0, 1.0)
  _number_in(f'{key}.backbone.bn_epsilon', b.bn_epsilon, 0.0, 1.0,
             lo_open=True)
  h = m.head
  _one_of(f'{key}.head.type', h.type, HEAD_TYPES)
  _positive_int(f'{key}.head.channels', h.channels)
  _positive_int(f'{key}.head.projection_channels', h.projection_channels)
  if not isinstance(h.atrous_rates, (list, tuple)) or not all(
      _is_int(r) and r >= 1 for r in h.atrous_rates):
    raise _fail(f'{key}.head.atrous_rates', h.atrous_rates,
                'use a tuple of integers >= 1, e.g. (6, 12, 18), or () for '
                'the reference MobileNetV2 head')
  if h.conv_rate_multiplier is not None:
    _positive_int(f'{key}.head.conv_rate_multiplier', h.conv_rate_multiplier)
  _positive_int(f'{key}.head.separable_depth_multiplier',
                h.separable_depth_multiplier)
  _number_in(f'{key}.head.dropout_rate', h.dropout_rate, 0.0, 1.0,
             hi_open=True)
  if h.type == 'dpc':
    validate_dpc_branches(h.dpc_branches, f'{key}.head.dpc_branches')
  dec = m.decoder
  _one_of(f'{key}.decoder.type', dec.type, DECODER_TYPES)
  _positive_int(f'{key}.decoder.low_level_channels', dec.low_level_channels)
  _positive_int(f'{key}.decoder.channels', dec.channels)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first unknown key or out-of-range value."""
  _check_keys(config, default_config(), 'config')
  _positive_int('config.seed', config.seed, minimum=0)
  validate_model_config(config.model)

  d = config.data
  if not isinstance(d.dataset, str) or not d.dataset:
    raise _fail('config.data.dataset', d.dataset,
                'name a dataset: voc2012, voc2012_aug or demo')
  _positive_int('config.data.crop_size', d.crop_size, minimum=16)
  _number_in('config.data.min_scale', d.min_scale, 0.0, 100.0, lo_open=True)
  _number_in('config.data.max_scale', d.max_scale, d.min_scale, 100.0)
  _number_in('config.data.scale_step', d.scale_step, 0.0, 100.0)
  _positive_int('config.data.ignore_label', d.ignore_label, minimum=0)
  if d.ignore_label > 255 or d.ignore_label < config.model.num_classes:
    raise _fail('config.data.ignore_label', d.ignore_label,
                f'use a label id in [{config.model.num_classes}, 255] that is '
                'not a class (255 for VOC)')
  _positive_int('config.data.num_workers', d.num_workers, minimum=0)
  _positive_int('config.data.prefetch_batches', d.prefetch_batches)

  t = config.train
  _positive_int('config.train.batch_size', t.batch_size)
  _positive_int('config.train.num_steps', t.num_steps)
  if t.num_epochs is not None:
    _number_in('config.train.num_epochs', t.num_epochs, 0.0, 1e9,
               lo_open=True)
  _one_of('config.train.optimizer', t.optimizer, OPTIMIZERS)
  _number_in('config.train.learning_rate', t.learning_rate, 0.0, 10.0,
             lo_open=True)
  _number_in('config.train.momentum', t.momentum, 0.0, 1.0, hi_open=True)
  _number_in('config.train.adam_b1', t.adam_b1, 0.0, 1.0, hi_open=True)
  _number_in('config.train.adam_b2', t.adam_b2, 0.0, 1.0, hi_open=True)
  _one_of('config.train.lr_schedule', t.lr_schedule, LR_SCHEDULES)
  _number_in('config.train.poly_power', t.poly_power, 0.0, 100.0)
  _number_in('config.train.end_learning_rate', t.end_learning_rate, 0.0,
             t.learning_rate)
  _positive_int('config.train.warmup_steps', t.warmup_steps, minimum=0)
  _number_in('config.train.inverse_time_decay', t.inverse_time_decay, 0.0,
             1e9)
  if t.reduce_on_plateau_factor is not None:
    _number_in('config.train.reduce_on_plateau_factor',
               t.reduce_on_plateau_factor, 0.0, 1.0, lo_open=True)
  _positive_int('config.train.reduce_on_plateau_patience',
                t.reduce_on_plateau_patience, minimum=0)
  _positive_int('config.train.reduce_on_plateau_accumulation_steps',
                t.reduce_on_plateau_accumulation_steps)
  _number_in('config.train.adam_eps', t.adam_eps, 0.0, 1.0, lo_open=True)
  _number_in('config.train.bias_lr_multiplier', t.bias_lr_multiplier, 0.0,
             1000.0)
  _number_in('config.train.weight_decay', t.weight_decay, 0.0, 1.0)
  _number_in('config.train.top_k_percent_pixels', t.top_k_percent_pixels, 0.0,
             1.0, lo_open=True)
  _positive_int('config.train.hard_example_mining_step',
                t.hard_example_mining_step, minimum=0)
  _positive_int('config.train.log_every_steps', t.log_every_steps)
  _positive_int('config.train.checkpoint_every_steps',
                t.checkpoint_every_steps)
  _positive_int('config.train.keep_checkpoints', t.keep_checkpoints)
  _positive_int('config.train.eval_every_steps', t.eval_every_steps, minimum=0)
  _one_of('config.train.init_from_scope', t.init_from_scope,
          ('backbone', 'model'))

  e = config.eval
  _one_of('config.eval.output_stride', e.output_stride, OUTPUT_STRIDES)
  _positive_int('config.eval.crop_size', e.crop_size, minimum=16)
  if (not isinstance(e.scales, (list, tuple)) or not e.scales or
      not all(_is_number(s) and 0 < s <= 8 for s in e.scales)):
    raise _fail('config.eval.scales', e.scales,
                'use a non-empty tuple of scales in (0, 8], e.g. (1.0,)')
  _positive_int('config.eval.batch_size', e.batch_size)
  _positive_int('config.eval.num_result_images', e.num_result_images,
                minimum=0)
  if e.max_images is not None:
    _positive_int('config.eval.max_images', e.max_images)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, with an optional ':argument'
  (`configs/voc_pretrained.py:mnv2_pascal_quant_513`), as --config reads it;
  for notebooks and scripts."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  file, _, argument = str(path).partition('.py:')
  file = file if file.endswith('.py') else file + '.py'
  if not os.path.exists(file):
    raise ConfigError(f'Config file {file} does not exist.')
  spec = importlib.util.spec_from_file_location('config_file', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  validate_config(config)
  return config


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


def effective_rate_multiplier(head_config: Any, output_stride: int) -> float:
  """The factor applied to ASPP/DPC rates, which are given at OS 16."""
  if head_config.conv_rate_multiplier is not None:
    return float(head_config.conv_rate_multiplier)
  return 16.0 / output_stride
