"""Config validation: every bad value gets one message naming key and fix."""

import pathlib
import re
import subprocess
import sys

import pytest

from deeplab_jax.cli import diagnose_override
from deeplab_jax.config import (RULES, default_config, load_config_file,
                                validate_config)
from deeplab_jax.data.datasets import check_num_classes
from deeplab_jax.errors import ConfigError
from deeplab_jax.models import backbones

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (REPO / 'configs').glob('*.py')
                      if not p.name.startswith('_'))


def _load(path):
  return load_config_file(str(path))


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_says_what_it_gives(path):
  config = _load(path)  # load_config_file validates.
  assert config.model.backbone.name in backbones.BACKBONES
  # big_vision-style docstrings: the command, the machine, the time and
  # the result, in a few lines, without dates.
  doc = path.read_text().split('"""')[1]
  assert 'python main.py --config=configs/' + path.name in doc, path
  assert re.search(r'CPU|GPU', doc), f'{path.name}: no machine'
  assert re.search(r'\d (s|min|ms)\b', doc), f'{path.name}: no time'
  assert not re.search(r'20\d\d-\d\d-\d\d', doc), f'{path.name}: a date'


def _leaf_keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items') and key != 'backbone':
      yield from _leaf_keys(value, f'{prefix}{key}.')
    elif key not in ('backbone', 'dpc_branches'):
      yield f'{prefix}{key}'


def test_every_scalar_key_has_a_validation_rule():
  """A key added to the schema without a rule would go unchecked."""
  ruled = {key for key, _ in RULES}
  unchecked = {'model.classifier_use_bias', 'model.bn_scale',
               'model.head.image_pooling', 'model.head.dropout_on_concat',
               'model.head.dropout_on_projection', 'data.data_dir',
               'data.manual_dir', 'data.train_split', 'data.eval_split',
               'data.random_flip', 'data.reprepare', 'train.regularize_depthwise',
               'train.freeze_batch_norm', 'train.init_from',
               'train.lovasz_per_image',
               'data.folder', 'train.freeze_backbone',
               'eval.flip', 'eval.follow_newest_only',
               'export.include_preprocessing', 'export.calibration_split',
               'eval.model_file'}  # Booleans and paths.
  missing = set(_leaf_keys(default_config())) - ruled - unchecked
  assert not missing, missing


def test_seed_config_maps_the_seed_json():
  config = _load(REPO / 'configs' / 'voc_seed.py')
  assert config.model.head.type == 'dpc'
  assert len(config.model.head.dpc_branches) == 5
  assert config.model.decoder.type == 'upsample'
  assert config.model.output_stride == 8
  assert (config.train.optimizer, config.train.learning_rate,
          config.train.adam_b1, config.train.adam_b2) == ('adam', 1e-4, 0.5,
                                                         0.99)
  assert config.train.batch_size == 6 and config.data.crop_size == 224


def _bad(**changes):
  config = default_config()
  for key, value in changes.items():
    node = config
    *parents, last = key.split('.')
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[last] = value
  return config


@pytest.mark.parametrize('key,value,fragments', [
    ('model.output_stride', 12, ['config.model.output_stride', '12', '8, 16,'
                                 ' 32']),
    ('model.num_classes', 1, ['config.model.num_classes', '1', '>= 2']),
    ('model.backbone.depth_multiplier', 0.0,
     ['config.model.backbone.depth_multiplier', '0.0', '(0.0']),
    ('model.backbone.depth_multiplier', -1.0, ['depth_multiplier', '-1.0']),
    ('model.head.type', 'psp', ['config.model.head.type', "'psp'", "'aspp'",
                                "'dpc'"]),
    ('model.decoder.type', 'unet', ['config.model.decoder.type', 'upsample']),
    ('model.backbone.channel_rounding', 'torch', ['channel_rounding',
                                                  "'keras'"]),
    ('model.head.atrous_rates', (6, 0), ['atrous_rates', '(6, 0)']),
    ('model.head.dropout_rate', 1.5, ['dropout_rate', '1.5']),
    ('eval.output_stride', 4, ['config.eval.output_stride', '4']),
    ('train.optimizer', 'lamb', ['config.train.optimizer', "'sgd'"]),
    ('train.batch_size', 0, ['config.train.batch_size', '>= 1']),
    ('model.backbone.name', 'resnet_v1_9', ['config.model.backbone.name',
                                            "'mobilenet_v2'"]),
    ('train.end_learning_rate', 0.1, ['config.train.end_learning_rate',
                                      '0.007']),
    ('data.max_scale', 0.25, ['config.data.max_scale', '[0.5, 100.0]']),
    ('train.num_epochs', -1.0, ['config.train.num_epochs', '-1.0']),
    ('eval.scales', (), ['config.eval.scales']),
])
def test_bad_values_are_named_with_allowed_values(key, value, fragments):
  with pytest.raises(ConfigError) as e:
    validate_config(_bad(**{key: value}))
  for fragment in fragments:
    assert fragment in str(e.value), str(e.value)


def test_unknown_key_is_named_with_a_suggestion():
  config = default_config()
  config.model.outptu_stride = 8
  with pytest.raises(ConfigError, match=r"'config.model.outptu_stride'.*"
                     r"Did you mean 'config.model.output_stride'"):
    validate_config(config)


def test_dpc_input_pointing_forward_is_rejected():
  config = default_config()
  config.model.head.type = 'dpc'
  config.model.head.dpc_branches = [
      {'kernel': 3, 'rate': [1, 6], 'op': 'conv', 'input': -1},
      {'kernel': 3, 'rate': [1, 1], 'op': 'conv', 'input': 2},
      {'kernel': 3, 'rate': [1, 1], 'op': 'conv', 'input': 0},
  ]
  with pytest.raises(ConfigError, match=r'dpc_branches\[1\]\.input = 2.*'
                     r'earlier branch \(0\.\.0\)'):
    validate_config(config)
  config.model.head.dpc_branches[1]['input'] = 1  # Itself.
  with pytest.raises(ConfigError, match=r'dpc_branches\[1\]\.input = 1'):
    validate_config(config)


@pytest.mark.parametrize('branch,fragment', [
    ({'kernel': 5, 'rate': [1, 1], 'op': 'conv', 'input': -1}, 'kernel = 5'),
    ({'kernel': 3, 'rate': [1], 'op': 'conv', 'input': -1}, 'rate = [1]'),
    ({'kernel': 3, 'rate': [1, 1], 'op': 'pool', 'input': -1}, "op = 'pool'"),
    ({'kernel': 3, 'rate': [1, 1], 'op': 'conv'}, 'lacks input'),
    ({'kernel': 1, 'rate': [1, 1], 'op': 'pyramid_pooling', 'input': -1},
     'grid_size'),
])
def test_bad_dpc_branches(branch, fragment):
  config = default_config()
  config.model.head.type = 'dpc'
  config.model.head.dpc_branches = [branch]
  with pytest.raises(ConfigError, match='dpc_branches'):
    validate_config(config)
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  assert fragment in str(e.value)


def test_diagnose_override_names_unknown_key():
  message = diagnose_override(['main.py', '--config.model.num_clases=3'])
  assert "'config.model.num_clases'" in message
  assert "Did you mean 'config.model.num_classes'" in message


def test_main_reports_unknown_override_in_one_line():
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/voc.py', '--mode=summary',
       '--config.foo=1'], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 1
  assert "error: Unknown config key 'config.foo'" in result.stderr
  assert 'Traceback' not in result.stderr


def test_main_reports_bad_value_without_traceback():
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/voc.py', '--mode=summary',
       '--config.model.output_stride=12'], cwd=REPO, capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 1
  assert ('error: config.model.output_stride = 12 is not allowed: use one of '
          '8, 16, 32.') in result.stderr
  assert 'Traceback' not in result.stderr


def _rows(text):
  """{module: (params, bn stats, total)} of a --mode=summary table."""
  rows = {}
  for line in text.splitlines():
    parts = line.split()
    if len(parts) == 4 and parts[1].replace(',', '').isdigit():
      rows[parts[0]] = tuple(int(p.replace(',', '')) for p in parts[1:])
  return rows


def test_main_summary_prints_parameter_counts():
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/voc.py', '--mode=summary'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  model_table, backbone_table = result.stdout.split('\n\n')[:2]
  rows = _rows(model_table)
  # The published counts of configs/voc.py (README, "The model"): the
  # backbone is Keras's MobileNetV2 1.0 without its final 1280-channel conv.
  assert rows['backbone'] == (1_811_712, 31_552, 1_843_264)
  assert rows['head'][2] == 755_904
  assert rows['decoder'][2] == 159_792
  assert rows['logits'] == (5_397, 0, 5_397)
  assert rows['total'][2] == 2_764_357
  assert rows['total'][2] == sum(
      v[2] for k, v in rows.items() if k != 'total')
  blocks = _rows(backbone_table)
  assert blocks['total'] == rows['backbone']  # Per backbone module.
  assert 'stem' in blocks and 'blocks' in blocks


def test_num_classes_must_fit_the_dataset():
  config = default_config()
  config.data.dataset = 'demo'
  with pytest.raises(ConfigError, match=r'num_classes = 21, but demo has 4 '
                     r'classes \(background, disk, square, triangle\)'):
    check_num_classes(config)
  config.model.num_classes = 4
  check_num_classes(config)


def test_backbone_keys_are_the_backbones_own():
  config = default_config()
  assert set(config.model.backbone.keys()) == set(
      backbones.backbone_config('mobilenet_v2').keys())
  config.model.backbone.name = 'mobilenet_v2'
  config.model.backbone.multi_grid = (1, 2, 4)  # Another backbone's key.
  with pytest.raises(ConfigError, match=r"config.model.backbone has keys "
                     r"\['multi_grid'\] that backbone 'mobilenet_v2' does "
                     r'not take.*backbone_config'):
    validate_config(config)


def test_none_and_list_literals_override_from_the_command_line():
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  argv = ['main.py', '--config.train.num_epochs=None',
          '--config.model.head.dpc_branches=[{"kernel": 1, "rate": [1, 1], '
          '"op": "conv", "input": -1}]', '--config.train.batch_size=3']
  rest, literals = cli.split_literal_overrides(argv)
  assert rest == ['main.py', '--config.train.batch_size=3']
  config = _load(REPO / 'configs' / 'voc_seed.py')
  assert config.train.num_epochs == 120.0
  cli.apply_literal_overrides(config, literals)
  assert config.train.num_epochs is None
  assert config.model.head.dpc_branches == [
      {'kernel': 1, 'rate': [1, 1], 'op': 'conv', 'input': -1}]
  validate_config(config)
  with pytest.raises(ConfigError, match=r'config.model.head.dpc_branches '
                     r'takes a list, written as JSON or a Python literal'):
    cli.split_literal_overrides(['--config.model.head.dpc_branches=[oops'])
  required = default_config()
  cli.apply_literal_overrides(required, {'train.num_steps': None})
  with pytest.raises(ConfigError, match=r'config.train.num_steps = None is '
                     r'not allowed: use an integer >= 1'):
    validate_config(required)


def test_main_takes_a_dpc_branch_list_and_none():
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=voc_seed', '--mode=summary',
       '--config.train.num_epochs=None',
       "--config.model.head.dpc_branches=[{'kernel': 3, 'rate': [1, 6], "
       "'op': 'conv', 'input': -1}]"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  # One DPC branch of 256 channels: the projection reads 256, not 5 * 256.
  rows = _rows(result.stdout.split('\n\n')[0])
  seed = subprocess.run(
      [sys.executable, 'main.py', '--config=voc_seed', '--mode=summary'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rows['head'][0] < _rows(seed.stdout.split('\n\n')[0])['head'][0]


def test_unwritable_eval_folder_is_one_message_before_any_work(tmp_path):
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  blocked = tmp_path / 'file'
  blocked.write_text('a file where the workdir should be')
  with pytest.raises(ConfigError, match=r'Cannot write to .*file/eval.*pass '
                     r'a writable --workdir'):
    cli.ensure_writable(str(blocked / 'eval'), '--workdir')
  cli.ensure_writable(str(tmp_path / 'ok' / 'eval'), '--workdir')
  assert (tmp_path / 'ok' / 'eval').is_dir()


def test_class_weights_take_a_list_or_a_name_from_the_command_line():
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  _, literals = cli.split_literal_overrides(
      ['--config.train.class_weights=[1, 2.5]'])
  assert literals == {'train.class_weights': [1, 2.5]}
  _, literals = cli.split_literal_overrides(
      ['--config.train.class_weights=inverse_frequency'])
  assert literals == {'train.class_weights': 'inverse_frequency'}
  config = default_config()
  config.train.class_weights = 'inverse_frequency'
  validate_config(config)
  config.train.class_weights = [1.0] * 21
  validate_config(config)
  config.train.class_weights = [1.0, 2.0]
  with pytest.raises(ConfigError, match='give one weight per class: 21'):
    validate_config(config)
  config.train.class_weights = 'balanced'
  with pytest.raises(ConfigError, match="'inverse_frequency'"):
    validate_config(config)
