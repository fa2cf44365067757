"""benchmarks/compare.py's pure parts: variants, config overrides, trace
paths (timing itself is never tested)."""

import pytest

from benchmarks import compare
from deeplab_jax.config import default_config


def test_a_variant_splits_into_xla_flags_environment_and_config():
  name, argv, env = compare.variant_spec(
      '--xla_gpu_force_conv_nhwc=true model.depthwise_impl=shifted '
      'SOME_SWITCH=on train.batch_size=8',
      ['--worker', 'ours:train'], {'XLA_FLAGS': '--caller', 'KEEP': '1'})
  assert name == ('ours[--xla_gpu_force_conv_nhwc=true model.depthwise_impl='
                  'shifted SOME_SWITCH=on train.batch_size=8]')
  assert argv == ['--worker', 'ours:train', '--set',
                  'model.depthwise_impl=shifted', '--set',
                  'train.batch_size=8']
  assert env == {'XLA_FLAGS': '--xla_gpu_force_conv_nhwc=true',
                 'SOME_SWITCH': 'on', 'KEEP': '1'}


def test_the_empty_variant_is_the_default():
  name, argv, env = compare.variant_spec(' ', ['--worker', 'ours:infer'],
                                          {'XLA_FLAGS': '--caller'})
  assert (name, argv, env) == ('ours[default]', ['--worker', 'ours:infer'],
                               {'XLA_FLAGS': ''})


def test_overrides_set_typed_values_and_reject_unknown_keys():
  config = default_config()
  compare.apply_overrides(config, ['model.depthwise_impl=native',
                                    'train.batch_size=3',
                                    'model.bn_epsilon=0.001'])
  assert config.model.depthwise_impl == 'native'
  assert config.train.batch_size == 3
  assert config.model.bn_epsilon == 0.001
  with pytest.raises(SystemExit, match='the config has no model.depth_impl'):
    compare.apply_overrides(config, ['model.depth_impl=native'])


def test_trace_paths_are_one_folder_per_scenario_and_worker(tmp_path):
  path = compare.trace_path(str(tmp_path), 'train b16 513 float32',
                             'ours[--xla_a=1 model.b=c]')
  assert path == tmp_path / 'train_b16_513_float32' / 'ours_--xla_a_1_model.b_c'


def test_every_scenario_has_the_eager_and_the_compiled_peer():
  import argparse  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(
      threads=2, device='cpu', crop=513, torch_channels_last=False,
      dtypes='float32', only='train,infer', batch_sizes='4,8',
      infer_batch=1, steps=3, infer_steps=20, peers='eager,compile',
      tflite='')
  scenarios = compare._scenarios(args)  # pylint: disable=protected-access
  assert [label for label, *_ in scenarios] == [
      'train b4 513 float32', 'train b8 513 float32', 'infer b1 513 float32']
  for _, _, _, peers in scenarios:
    names = [name for name, _ in peers]
    assert names == ['ours', 'torch eager', 'torch.compile']
    eager, compiled = peers[1][1], peers[2][1]
    assert '--torch_compile' not in eager
    assert compiled[compiled.index('--torch_compile') + 1] == 'default'
  args.peers = 'eager,jit'
  with pytest.raises(SystemExit, match="unknown peer 'jit'"):
    compare._scenarios(args)  # pylint: disable=protected-access
