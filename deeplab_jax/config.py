"""The config schema: every key, its reference default, and its validation.

`default_config()` returns the full ml_collections schema with the reference
DeepLab recipe as defaults; every file in `configs/` starts from it and
overrides fields. `config.model.backbone` is the chosen backbone's own
sub-dict (`models.backbones.backbone_config(name)`), whose keys the backbone
defines and checks. `validate_config()` is called once at the edge (main.py,
notebooks) and raises `ConfigError` naming the key, the bad value and the
allowed ones, so nothing deeper has to re-check user input;
`load_config_file()` reads a `configs/*.py` file the way `--config` does.
"""

from __future__ import annotations

import ast
import difflib
import importlib.resources
import importlib.util
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from deeplab_jax.config_checks import (CHECKS, Check, choice, class_weights,
                                       fail, input_scale, int_tuple, integer,
                                       num_classes, one_of, optional, ranged,
                                       registered, registered_list, scales,
                                       validate_dpc_branches)
from deeplab_jax.data.datasets import DATASETS
from deeplab_jax.data.folder_builder import MASK_FORMATS
from deeplab_jax.errors import ConfigError
from deeplab_jax.export.serving import OUTPUTS
from deeplab_jax.inference import engines, policy
from deeplab_jax.inference.runtimes import runtime_names
from deeplab_jax.models import backbones
from deeplab_jax.models.decoder import DECODERS
from deeplab_jax.models.deeplab import DTYPES
from deeplab_jax.models.heads import HEADS
from deeplab_jax.ops.depthwise import CONV_IMPLEMENTATIONS
from deeplab_jax.losses import LOSSES, as_terms
from deeplab_jax.metric_writers import WRITERS
from deeplab_jax.optim import LR_SCHEDULES, OPTIMIZERS

OUTPUT_STRIDES = (8, 16, 32)
# Keys that were replaced: the message says by what.
RENAMED_KEYS = {
    'config.eval.resize_to_crop':
        "config.eval.input_scale = 'fit' (True) or 'native' (False)",
}
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
  m.num_classes = 21  # 0: the dataset's number of classes.
  m.output_stride = 16  # Training output stride; eval.output_stride for eval.
  m.dtype = 'float32'  # Compute dtype; parameters always stay float32.
  # 'auto': the shifted-sum depthwise conv on CPU and on GPUs in float32;
  # on GPUs in bfloat16 its forward with the native conv's gradients
  # ('shifted_forward'); the native conv elsewhere ('native'). Why:
  # deeplab_jax/ops/depthwise.py.
  m.depthwise_impl = 'auto'
  # BatchNorm of the heads and decoder (reference: decay 0.9997, eps 1e-5).
  m.bn_momentum = 0.9997
  m.bn_epsilon = 1e-5
  m.bn_scale = True
  m.classifier_kernel_size = 1
  m.classifier_use_bias = True

  # The backbone's own keys (name, depth_multiplier, ...): see its module in
  # deeplab_jax/models/backbones/. Another backbone: assign
  # backbones.backbone_config('<name>') in a config file.
  m.backbone = backbones.backbone_config('mobilenet_v2')

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
  # A name of deeplab_jax.data.datasets.DATASETS; its spec gives the
  # classes, palette and ignore label.
  d.dataset = 'voc2012'
  d.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None: default.
  d.manual_dir = config_dict.placeholder(str)  # VOC tars or VOCdevkit/.
  # The folder dataset (dataset = 'folder'; deeplab_jax/data/folder_builder):
  # DIR with images/ and masks/; masks as class ids, rgb colours of
  # classes.csv, or binary; the share held out for validation when
  # DIR/splits/ does not list the splits.
  d.folder = config_dict.placeholder(str)
  d.mask_format = 'ids'  # ids | rgb | binary
  d.val_fraction = 0.1
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.crop_size = 513  # Training crop (seed: image_size).
  d.min_scale = 0.5
  d.max_scale = 2.0
  d.scale_step = 0.25
  d.random_flip = True
  # Build the prepared dataset again (a damaged or outdated one).
  d.reprepare = False
  # grain worker processes per host; 0: in-process; -1: picked from the
  # cores and the backend (data.pipeline.resolve_workers).
  d.num_workers = -1
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
  # Per-class loss weights for imbalanced data: None (uniform), a list of
  # num_classes weights, or 'inverse_frequency' (median frequency over
  # each class's frequency, counted once from the training masks, logged).
  t.class_weights = config_dict.placeholder(object)
  # Backbone parameters and BatchNorm statistics fixed (the optimizer skips
  # them): only the head, decoder and classifier train. None (automatic):
  # frozen when init_from has BatchNorm folded into its convolutions (the
  # TFLite exports, whose backbone loses its features when trained);
  # True / False force it, with a warning when False is risky.
  t.freeze_backbone = config_dict.placeholder(bool)
  # The loss: (name, weight) terms of deeplab_jax.losses.LOSSES, summed
  # (cross_entropy, focal, dice, lovasz_softmax), each logged.
  t.loss = (('cross_entropy', 1.0),)
  t.top_k_percent_pixels = 1.0  # cross_entropy: < 1, hard-pixel mining.
  t.hard_example_mining_step = 0  # Steps over which top-k anneals from 1.
  t.focal_gamma = 2.0  # focal: (1 - p_t) ** gamma.
  t.dice_smooth = 1.0  # dice: added to its numerator and denominator.
  t.lovasz_per_image = False  # lovasz_softmax: per image, else per batch.
  # Each optimizer step runs the global batch as this many micro-batches
  # (gradients summed inside the jitted step: less memory, the same step).
  t.accumulate_steps = 1
  # An exponential moving average of the weights (and BatchNorm
  # statistics) kept beside them, e.g. 0.9999; 0: none.
  t.ema_decay = 0.0
  # Metric backends: names of deeplab_jax.metric_writers.WRITERS
  # ('tensorboard', 'wandb').
  t.writers = ('tensorboard',)
  # BatchNorm in training: None (automatic) freezes it (moving statistics,
  # fixed scale and offset... the reference's fine_tune_batch_norm=False)
  # when the per-device batch is below batch_norm_min_batch, or when
  # init_from has BatchNorm folded into the convolutions (the TFLite
  # exports); True / False force it, with a warning when False is risky.
  t.freeze_batch_norm = config_dict.placeholder(bool)
  # The reference fine-tunes BatchNorm only with 12 or more images a device.
  t.batch_norm_min_batch = 12
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
  # The inference policy (deeplab_jax/inference/policy.py), shared by eval,
  # predict and the exported-file runtimes. How the image is scaled first:
  # 'native' (as it is), 'fit' (longer side at most crop_size, as the
  # official mobile exports are fed) or a factor such as 0.5.
  e.input_scale = config_dict.FieldReference('native', field_type=object)
  # How it is run: 'whole' (padded to a canvas of at least crop_size),
  # 'slide' (tiles of tile_size every tile_stride pixels, tile_batch at a
  # time, logits blended where they overlap), or 'auto': whole while its
  # largest input (canvas x the largest scale squared) has at most
  # max_whole_pixels pixels, slide beyond.
  e.mode = 'auto'
  e.crop_size = 513  # Whole mode pads images (never crops) to at least this.
  e.tile_size = 513
  e.tile_stride = config_dict.placeholder(int)  # None: 2/3 of tile_size.
  e.tile_batch = 4
  # Overlapping tiles' logits averaged 'gaussian' (weighted towards each
  # tile's centre, sigma = tile / 8) or 'uniform'.
  e.tile_weighting = 'gaussian'
  # What ASPP's image pooling sees in a tile: the whole image's mean feature
  # ('image': a first pass of the backbone over the tiles, about 1.8x the
  # time) or the tile's own ('tile').
  e.slide_context = 'image'
  e.max_whole_pixels = 4_194_304  # 2048 x 2048.
  e.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  e.flip = True
  e.batch_size = 8
  e.num_result_images = 16
  e.max_images = config_dict.placeholder(int)  # None: the whole split.
  # Larger images are skipped with a message (PIL's decompression bomb
  # guard is 89 million pixels).
  e.max_image_pixels = 89_478_485
  # Which weights eval, predict and export use when a checkpoint has both:
  # 'ema' (the moving average, train.ema_decay) or 'raw'.
  e.weights = 'ema'
  # --follow stops after this many seconds without a new checkpoint; it
  # looks every follow_poll_seconds and evaluates every checkpoint in order
  # (only the newest new one with follow_newest_only).
  e.follow_timeout = 3600.0
  e.follow_poll_seconds = 30.0
  e.follow_newest_only = False
  # 'jax' evaluates the Flax model; 'litert' (.tflite), 'onnxruntime'
  # (.onnx) or 'stablehlo' evaluates eval.model_file, an exported file, with
  # the same pipeline
  # and metrics (one scale, no flips; the export's settings in config.export).
  e.runtime = 'jax'
  e.model_file = config_dict.placeholder(str)
  # How runtime 'jax' runs on a CPU: 'auto' converts a program that keeps
  # running to LiteRT in memory (with the TF extra) and keeps it where it
  # is faster and gives XLA's outputs; 'xla' or 'litert' always
  # (deeplab_jax/inference/engines.py).
  e.cpu_runtime = 'auto'

  # --------------------------------------------------------------- export
  # --mode=export --export_format=tflite|stablehlo (deeplab_jax/export/).
  c.export = ml_collections.ConfigDict()
  x = c.export
  x.input_size = 0  # Fixed H = W of the exported input; 0: eval.crop_size.
  # True: the file takes uint8 RGB and normalises inside (as the official
  # mobile exports); False: float32 normalised like the model's input.
  x.include_preprocessing = False
  x.output = 'logits'  # logits | probabilities | argmax
  # tflite_int8: images of this split of config.data (unaugmented, fitted
  # to the input) calibrate it; the int8 report scores the eval split.
  x.calibration_images = 100
  x.calibration_split = 'train'
  return c


def loss_terms(key: str, value: Any, config: Any) -> None:
  """config.train.loss: a non-empty list of (name, weight >= 0) with
  registered names and a positive weight somewhere."""
  del config
  terms = as_terms(value)
  if (terms is None or any(weight < 0 for _, weight in terms) or
      not any(weight > 0 for _, weight in terms)):
    raise fail(key, value, "use (name, weight) terms with weights >= 0, "
               "not all 0, e.g. (('cross_entropy', 1.0), ('dice', 0.5))")
  for name, _ in terms:
    one_of(f'{key} term', name, LOSSES.names())


_INF = float('inf')

# (key under `config.`, check): every scalar key of the schema but the
# backbone's (its class checks those) and the DPC branches (below).
RULES: tuple[tuple[str, Check], ...] = (
    ('seed', integer(0)),
    ('model.num_classes', num_classes),
    ('model.output_stride', choice(OUTPUT_STRIDES)),
    ('model.dtype', registered(lambda: DTYPES)),
    ('model.depthwise_impl', registered(lambda: CONV_IMPLEMENTATIONS)),
    ('model.bn_momentum', ranged(0.0, 1.0)),
    ('model.bn_epsilon', ranged(0.0, 1.0, lo_open=True)),
    ('model.classifier_kernel_size', choice((1, 3))),
    ('model.head.type', registered(HEADS.names)),
    ('model.head.channels', integer()),
    ('model.head.projection_channels', integer()),
    ('model.head.atrous_rates', int_tuple(
        'e.g. (6, 12, 18), or () for the reference MobileNetV2 head')),
    ('model.head.conv_rate_multiplier', optional(integer())),
    ('model.head.separable_depth_multiplier', integer()),
    ('model.head.dropout_rate', ranged(0.0, 1.0, hi_open=True)),
    ('model.decoder.type', registered(DECODERS.names)),
    ('model.decoder.low_level_channels', integer()),
    ('model.decoder.channels', integer()),
    ('data.dataset', registered(DATASETS.names)),
    ('data.mask_format', choice(MASK_FORMATS)),
    ('data.val_fraction', ranged(0.0, 1.0, lo_open=True, hi_open=True)),
    ('data.crop_size', integer(16)),
    ('data.min_scale', ranged(0.0, 100.0, lo_open=True)),
    ('data.max_scale', ranged(lambda c: c.data.min_scale, 100.0)),
    ('data.scale_step', ranged(0.0, 100.0)),
    ('data.num_workers', integer(-1)),
    ('data.prefetch_batches', integer()),
    ('train.batch_size', integer()),
    ('train.num_steps', integer()),
    ('train.num_epochs', optional(ranged(0.0, 1e9, lo_open=True))),
    ('train.optimizer', registered(OPTIMIZERS.names)),
    ('train.learning_rate', ranged(0.0, 10.0, lo_open=True)),
    ('train.momentum', ranged(0.0, 1.0, hi_open=True)),
    ('train.adam_b1', ranged(0.0, 1.0, hi_open=True)),
    ('train.adam_b2', ranged(0.0, 1.0, hi_open=True)),
    ('train.adam_eps', ranged(0.0, 1.0, lo_open=True)),
    ('train.lr_schedule', registered(LR_SCHEDULES.names)),
    ('train.poly_power', ranged(0.0, 100.0)),
    ('train.end_learning_rate',
     ranged(0.0, lambda c: c.train.learning_rate)),
    ('train.warmup_steps', integer(0)),
    ('train.inverse_time_decay', ranged(0.0, 1e9)),
    ('train.reduce_on_plateau_factor',
     optional(ranged(0.0, 1.0, lo_open=True))),
    ('train.reduce_on_plateau_patience', integer(0)),
    ('train.reduce_on_plateau_accumulation_steps', integer()),
    ('train.weight_decay', ranged(0.0, 1.0)),
    ('train.bias_lr_multiplier', ranged(0.0, 1000.0)),
    ('train.batch_norm_min_batch', integer(1)),
    ('train.class_weights', class_weights),
    ('train.loss', loss_terms),
    ('train.top_k_percent_pixels', ranged(0.0, 1.0, lo_open=True)),
    ('train.focal_gamma', ranged(0.0, 10.0)),
    ('train.dice_smooth', ranged(0.0, 1e6)),
    ('train.accumulate_steps', integer()),
    ('train.ema_decay', ranged(0.0, 1.0, hi_open=True)),
    ('train.writers', registered_list(WRITERS.names)),
    ('train.hard_example_mining_step', integer(0)),
    ('train.log_every_steps', integer()),
    ('train.checkpoint_every_steps', integer()),
    ('train.keep_checkpoints', integer()),
    ('train.eval_every_steps', integer(0)),
    ('train.init_from_scope', choice(('backbone', 'model'))),
    ('eval.output_stride', choice(OUTPUT_STRIDES)),
    ('eval.input_scale', input_scale),
    ('eval.mode', choice(policy.MODES)),
    ('eval.crop_size', integer(16)),
    ('eval.tile_size', integer(17)),
    ('eval.tile_stride', optional(integer())),
    ('eval.tile_batch', integer()),
    ('eval.tile_weighting', choice(policy.TILE_WEIGHTINGS)),
    ('eval.slide_context', choice(policy.SLIDE_CONTEXTS)),
    ('eval.max_whole_pixels', integer()),
    ('eval.scales', scales),
    ('eval.batch_size', integer()),
    ('eval.num_result_images', integer(0)),
    ('eval.max_images', optional(integer())),
    ('eval.max_image_pixels', integer()),
    ('eval.weights', choice(('ema', 'raw'))),
    ('eval.follow_timeout', ranged(0.0, 1e9)),
    ('eval.follow_poll_seconds', ranged(0.0, 1e6, lo_open=True)),
    ('eval.runtime', registered(runtime_names)),
    ('eval.cpu_runtime', choice(engines.CPU_RUNTIMES)),
    ('export.input_size', integer(0)),
    ('export.calibration_images', integer()),
    ('export.output', choice(OUTPUTS)),
)


def _check_keys(config: Any, schema: Any, prefix: str) -> None:
  """Raises on keys the schema does not know, recursively."""
  if not isinstance(schema, (Mapping, ml_collections.ConfigDict)):
    return
  if not isinstance(config, (Mapping, ml_collections.ConfigDict)):
    raise ConfigError(
        f'{prefix} must be a group of settings like {sorted(schema.keys())}, '
        f'not {config!r}.')
  known = list(schema.keys())
  for key in config.keys():
    if f'{prefix}.{key}' in RENAMED_KEYS:
      raise ConfigError(f'{prefix}.{key} was replaced by '
                        f'{RENAMED_KEYS[prefix + "." + key]}.')
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" Did you mean '{prefix}.{close[0]}'?" if close else ''
      raise ConfigError(
          f"Unknown config key '{prefix}.{key}'.{hint} Known keys of {prefix}: "
          f'{", ".join(sorted(known))}.')
    if key in ('dpc_branches',):
      continue
    _check_keys(config[key], schema[key], f'{prefix}.{key}')


def _lookup(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate_backbone_config(backbone_config: Any,
                             key: str = 'config.model.backbone') -> None:
  """Checks the backbone sub-dict against its backbone's own schema."""
  if not isinstance(backbone_config, (Mapping, ml_collections.ConfigDict)):
    raise fail(key, backbone_config, 'use a group of backbone settings '
                "(backbones.backbone_config('mobilenet_v2'))")
  name = backbone_config.get('name')
  one_of(f'{key}.name', name, backbones.BACKBONES.names())
  cls = backbones.get_backbone(name)
  schema = cls.default_config()
  stray = [k for k in backbone_config.keys() if k not in schema]
  if stray:
    raise ConfigError(
        f"{key} has keys {stray} that backbone {name!r} does not take (its "
        f'keys: {", ".join(sorted(schema.keys()))}). To switch backbones, '
        'assign the whole sub-dict in a config file: config.model.backbone '
        f"= backbones.backbone_config({name!r}).")
  _check_keys(backbone_config, schema, key)
  cls.validate_config(backbone_config, key, CHECKS)


def _run_rules(config: Any, prefix: str) -> None:
  for dotted, check in RULES:
    if dotted.startswith(prefix):
      check(f'config.{dotted}', _lookup(config, dotted), config)


def validate_model_config(model_config: Any) -> None:
  """Checks `config.model` alone (e.g. for the pretrained import)."""
  wrapper = ml_collections.ConfigDict({'model': model_config})
  validate_backbone_config(model_config.backbone)
  schema = default_config().model
  schema.backbone = model_config.backbone
  _check_keys(model_config, schema, 'config.model')
  _run_rules(wrapper, 'model.')
  if model_config.head.type == 'dpc':
    validate_dpc_branches(model_config.head.dpc_branches)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first unknown key or out-of-range value."""
  if 'model' in config and 'backbone' in config.model:
    validate_backbone_config(config.model.backbone)
  schema = default_config()
  schema.model.backbone = config.model.backbone  # Checked by its own class.
  _check_keys(config, schema, 'config')
  _run_rules(config, '')
  if config.model.head.type == 'dpc':
    validate_dpc_branches(config.model.head.dpc_branches)


def _configs_folder() -> Any:
  """The shipped configs: the installed package `deeplab_jax.configs`, or,
  when `deeplab_jax` is imported from a source checkout (its folder on
  sys.path), the checkout's `configs/` beside it."""
  try:
    return importlib.resources.files('deeplab_jax.configs')
  except ModuleNotFoundError:
    return pathlib.Path(__file__).resolve().parents[1] / 'configs'


def shipped_configs() -> list[str]:
  """Names of the config files shipped with the package (configs/*.py)."""
  return sorted(p.name[:-3] for p in _configs_folder().iterdir()
                if p.name.endswith('.py') and not p.name.startswith('_'))


def resolve_config_path(value: str) -> str:
  """A --config value as a file path (with its ':argument', if any): an
  existing file or any path stays; the name of a shipped config (`voc`,
  `voc_pretrained:mnv2_pascal_quant_513`) becomes its packaged file."""
  file, colon, argument = str(value).partition(':')
  if os.path.exists(file) or os.sep in file or '/' in file:
    return str(value)
  name = file[:-3] if file.endswith('.py') else file
  packaged = _configs_folder() / f'{name}.py'
  if not packaged.is_file():
    raise ConfigError(
        f'--config={value}: no such file, and no shipped config named '
        f'{name!r}. Give a path to a config file, or one of: '
        f'{", ".join(shipped_configs())}.')
  return f'{packaged}{colon}{argument}'


def check_config_file(value: str) -> str:
  """The file of a --config value (a path or a shipped config's name, with
  an optional ':argument'), checked: it exists, parses and defines
  get_config. ConfigError naming the file and the problem otherwise."""
  resolved = resolve_config_path(value)
  file = resolved.partition('.py:')[0]
  file = file if file.endswith('.py') else file + '.py'
  if not os.path.isfile(file):
    raise ConfigError(
        f'--config={value}: {file} does not exist. Give a config file '
        f'(configs/*.py) or a shipped config\'s name: '
        f'{", ".join(shipped_configs())}.')
  try:
    with open(file, encoding='utf-8') as f:
      tree = ast.parse(f.read(), filename=file)
  except SyntaxError as e:
    raise ConfigError(f'--config={value}: {file} line {e.lineno}: '
                      f'{e.msg}.') from None
  if not any(isinstance(node, ast.FunctionDef) and node.name == 'get_config'
             for node in tree.body):
    raise ConfigError(
        f'--config={value}: {file} defines no get_config(); a config file '
        'defines get_config() returning the config (see configs/demo.py).')
  return resolved


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, with an optional ':argument'
  (`configs/voc_pretrained.py:mnv2_pascal_quant_513`), as --config reads it;
  a shipped config's name works too (`demo`). Validated. For notebooks,
  scripts, benchmarks and tests."""
  file, _, argument = check_config_file(str(path)).partition('.py:')
  file = file if file.endswith('.py') else file + '.py'
  spec = importlib.util.spec_from_file_location('config_file', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  validate_config(config)
  return config
