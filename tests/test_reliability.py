"""Faults and bad input, as a reliability engineer tries them: a damaged
checkpoint is moved aside and written again (and never hides behind a
success), a run resumes on another device count, a damaged prepared
dataset is one message with the way out, stopped runs exit 75 and say so,
a second Ctrl-C quits at once, a missing config file is one line."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deeplab_jax import checkpoints, train
from deeplab_jax.data import pipeline
from deeplab_jax.errors import CheckpointError, DatasetError
from deeplab_jax.models import backbones
from tests.helpers.toy_backbone import ToyBackbone
from tests.test_train import REPO, _env, _main, _wait_for_checkpoint_after

pytestmark = pytest.mark.xdist_group('voc_train')


@pytest.fixture(autouse=True)
def _toy_backbone_registered(monkeypatch):
  monkeypatch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)


@pytest.fixture(scope='module')
def voc_config(voc_prepared):
  from tests.conftest import voc_train_config  # pylint: disable=g-import-not-at-top
  config, _ = voc_prepared
  config = voc_train_config(config.data.data_dir, config.data.manual_dir)
  config.model.backbone = ToyBackbone.default_config()
  config.train.log_every_steps = 2
  return config


def _steps(workdir):
  return checkpoints.Checkpointer(workdir, read_only=True).all_steps()


def _break(workdir, step):
  shutil.rmtree(pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state' /
                'd')


def test_a_damaged_checkpoint_is_moved_aside_and_written_again(
    voc_config, tmp_path, capsys):
  """The issue's sequence, shorter: train to 8, break 8, train to 10 (8
  moved aside and written again), break 10, train to 10 again (10 moved
  aside, written again): every run ends with its newest step usable."""
  workdir = tmp_path / 'run'
  config = voc_config.copy_and_resolve_references()
  config.train.num_steps = 8
  assert train.train(config, str(workdir))['final_step'] == 8
  _break(workdir, 8)
  config.train.num_steps = 10
  result = train.train(config, str(workdir))
  out = capsys.readouterr().out
  assert f'moved aside to {workdir}/checkpoints_unusable/8' in out, out
  assert 'incomplete: no state/d' in out and 'Resuming from step 6' in out
  assert result['final_step'] == 10 and not result.get('stopped')
  assert {8, 10} <= set(_steps(workdir))
  _break(workdir, 10)
  result = train.train(config, str(workdir))
  out = capsys.readouterr().out
  assert 'Resuming from step 8' in out
  assert 'checkpoints_unusable/10' in out
  assert result['final_step'] == 10
  model, step = checkpoints.restore_model(config, str(workdir))
  assert step == 10 and model is not None
  assert sorted(os.listdir(workdir / 'checkpoints_unusable')) == ['10', '8']
  # Eval and predict fall back to the newest usable step, naming the other.
  _break(workdir, 10)
  _, step = checkpoints.restore_model(config, str(workdir))
  out = capsys.readouterr().out
  assert step == 8 and 'Skipping checkpoint' in out and '/10:' in out


def test_a_run_whose_last_checkpoint_is_not_written_does_not_succeed(
    voc_config, tmp_path, monkeypatch):
  config = voc_config.copy_and_resolve_references()
  config.train.num_steps = 4
  real_save = checkpoints.Checkpointer.save

  def save(self, step, state, data_state):
    if step == 4:
      return  # As orbax does when the step's folder already exists.
    real_save(self, step, state, data_state)

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', save)
  with pytest.raises(CheckpointError, match='checkpoint of step 4 .* was not '
                     'written completely: run the same command again'):
    train.train(config, str(tmp_path / 'run'))


def _train_run(workdir, data_dir, devices, num_steps, stop_after=None):
  args = [sys.executable, '-m', 'tests.helpers.train_run',
          f'--devices={devices}', f'--workdir={workdir}',
          f'--data_dir={data_dir}', f'--num_steps={num_steps}']
  if stop_after:
    args.append(f'--stop_after={stop_after}')
  done = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return done.stdout


def _losses(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  return {e.step: e.value for e in events.Scalars('train/loss')}


@pytest.mark.parametrize('before,after', [(2, 1), (1, 2)])
def test_resume_on_another_device_count(demo_data_dir, tmp_path, before,
                                        after):
  """3 steps on `before` devices, then to 6 on `after`: the resumed run
  says what changed and takes the steps an uninterrupted run on `after`
  devices takes (the data position carries over: one process both
  times)."""
  straight = tmp_path / 'straight'
  _train_run(straight, demo_data_dir, after, 6)
  moved = tmp_path / 'moved'
  _train_run(moved, demo_data_dir, before, 6, stop_after=3)
  out = _train_run(moved, demo_data_dir, after, 6)
  assert 'Resuming from step 3' in out, out
  plural = lambda n: f'{n} device{"s" * (n != 1)}'  # noqa: E731
  assert (f'written on {plural(before)}, 1 process; this run has '
          f'{plural(after)}, 1 process: the state is restored onto these '
          'devices; the data position carries over.') in out, out
  want, got = _losses(straight), _losses(moved)
  assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([got[s] for s in range(1, 7)],
                             [want[s] for s in range(1, 7)], atol=1e-4)
  straight_weights = checkpoints.read_weights(straight / 'checkpoints' / '6')
  moved_weights = checkpoints.read_weights(moved / 'checkpoints' / '6')
  for key, value in straight_weights.items():
    np.testing.assert_allclose(moved_weights[key], value, atol=1e-4)


def _demo_data(demo_data_dir, tmp_path):
  data_dir = tmp_path / 'tfds'
  shutil.copytree(demo_data_dir, data_dir)
  from tests.helpers import toy_demo_config  # pylint: disable=g-import-not-at-top
  config = toy_demo_config.get_config()
  config.data.data_dir = str(data_dir)
  config.data.num_workers = 0
  builder = pipeline.prepare_dataset(config.data)
  return config, builder


@pytest.mark.parametrize('damage', ['truncated', 'garbled'])
def test_a_damaged_prepared_file_is_one_message_with_the_way_out(
    demo_data_dir, tmp_path, damage):
  config, builder = _demo_data(demo_data_dir, tmp_path)
  path = pathlib.Path(builder.info.splits['train'].filepaths[0])
  data = bytearray(path.read_bytes())
  if damage == 'truncated':
    path.write_bytes(bytes(data[:len(data) // 2]))
    expected = f'The prepared file {path} is damaged'
  else:  # The index intact, records in the middle garbled.
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    expected = 'A prepared file of this split is damaged'
  for workers in (0, 1):
    config.data.num_workers = workers
    with pytest.raises(DatasetError) as error:
      source = pipeline.data_source(config.data, 'train')
      for index in range(len(source)):
        source[index]
    message = str(error.value)
    assert expected in message and str(path) in message, message
    assert '--config.data.reprepare=True' in message
  config.data.reprepare = True
  pipeline.prepare_dataset(config.data)
  config.data.reprepare = False
  source = pipeline.data_source(config.data, 'train')
  assert source[len(source) - 1]['image']  # Readable again.


def test_a_killed_preparation_leaves_nothing_behind(demo_data_dir, tmp_path,
                                                    capsys):
  config, builder = _demo_data(demo_data_dir, tmp_path)
  root = pathlib.Path(builder.data_dir).parent
  stale = root / 'incomplete.XYZ123_1.0.0'
  stale.mkdir()
  (stale / 'part.array_record').write_bytes(b'0' * 1000)
  config.data.reprepare = True
  pipeline.prepare_dataset(config.data)
  assert not stale.exists()
  assert 'Removed 1 unfinished preparation(s)' in capsys.readouterr().out


def test_stopped_runs_exit_75_and_say_stopped(demo_data_dir, tmp_path):
  """SIGTERM (preemption) and one Ctrl-C save a checkpoint, say the run
  stopped and exit 75; a second Ctrl-C quits at once with 130."""
  workdir = tmp_path / 'run'
  args = [f'--config.data.data_dir={demo_data_dir}',
          '--config.data.num_workers=1', '--config.train.num_steps=100000',
          '--config.train.checkpoint_every_steps=4',
          '--config.train.log_every_steps=4', '--config.train.batch_size=4',
          '--config.data.crop_size=49']
  first = _main(workdir, args)
  _wait_for_checkpoint_after(workdir, 0, first)
  first.send_signal(signal.SIGTERM)
  output, _ = first.communicate(timeout=120)
  assert first.returncode == 75, output[-3000:]
  last = output.strip().splitlines()[-1]
  assert last.startswith('Stopped by SIGTERM at step ') and (
      'of 100000' in last and 'Run the same command to resume (exit code '
      '75' in last), last
  assert 'Trained to step' not in output
  # One Ctrl-C: the same, a checkpoint and exit 75, no traceback.
  interrupted = _main(workdir, args)
  stopped_at = max(_steps(workdir))
  _wait_for_checkpoint_after(workdir, stopped_at, interrupted)
  interrupted.send_signal(signal.SIGINT)
  output, _ = interrupted.communicate(timeout=120)
  assert interrupted.returncode == 75, output[-3000:]
  assert 'Stopped by Ctrl-C at step' in output
  assert max(_steps(workdir)) > stopped_at
  for noise in ('Traceback', 'KeyboardInterrupt', 'Exception ignored'):
    assert noise not in output, output[-3000:]
  # Two Ctrl-C 0.15 s apart: the second quits at once, without saving, and
  # nobody (the trainer's hooks, the data worker) prints a traceback.
  second = _main(workdir, args)
  stopped_at = max(_steps(workdir))
  _wait_for_checkpoint_after(workdir, stopped_at, second)
  second.send_signal(signal.SIGINT)
  time.sleep(0.15)
  second.send_signal(signal.SIGINT)
  output, _ = second.communicate(timeout=120)
  assert second.returncode == 130, output[-3000:]
  assert 'Second Ctrl-C: quitting without saving.' in output
  for noise in ('Traceback', 'KeyboardInterrupt', 'Exception ignored'):
    assert noise not in output, output[-3000:]


@pytest.mark.parametrize('text,expected', [
    (None, 'configs/nope.py does not exist. Give a config file'),
    ('x = 1\n', 'defines no get_config(); a config file defines'),
    ('def get_config(:\n', 'line 1: invalid syntax'),
    ('def get_config():\n  raise ValueError("boom")\n',
     'the config file raised ValueError: boom'),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, expected):
  if text is None:
    path = 'configs/nope.py'
  else:
    path = tmp_path / 'mine.py'
    path.write_text(text)
  done = subprocess.run(
      [sys.executable, 'main.py', f'--config={path}', '--mode=summary'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
      check=False)
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --config='), lines
  assert expected in lines[0] and str(path) in lines[0], lines[0]
  assert 'config_config' not in lines[0]
