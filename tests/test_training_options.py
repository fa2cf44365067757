"""Training options: gradient accumulation, EMA of the weights, losses by
name and the Weights & Biases writer."""

import glob
import json
import pathlib
import signal
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from deeplab_jax import (checkpoints, distributed, losses, metric_writers,
                         train, train_step)
from deeplab_jax.config import validate_config
from deeplab_jax.errors import ConfigError, MissingDependencyError
from deeplab_jax.models import backbones
from deeplab_jax.weights import tree
from tests.helpers import one_step, toy_demo_config
from tests.helpers.toy_backbone import ToyBackbone
from tests.test_train import REPO, _env, _wait_for_checkpoint_after

pytestmark = pytest.mark.xdist_group('voc_train')


@pytest.fixture(autouse=True)
def _toy_backbone_registered(monkeypatch):
  monkeypatch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)


def _max_difference(a, b):
  assert set(a) == set(b)
  return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
             for k in a)


# ------------------------------------------------------ gradient accumulation


def _frozen(config, batch_size, accumulate_steps):
  config = config.copy_and_resolve_references()
  config.train.freeze_batch_norm = True
  config.model.head.dropout_rate = 0.0
  config.train.batch_size = batch_size
  config.train.accumulate_steps = accumulate_steps
  return config


def test_two_micro_batches_of_4_take_the_step_of_one_batch_of_8():
  """One device, a tiny MobileNetV2 with BatchNorm frozen: the step of 8
  images equals 2 accumulated micro-batches of 4 (images with different
  numbers of labelled pixels, so a mean of the micro-batches' means would
  differ)."""
  config = one_step.config_for('mobilenet_v2')
  mesh = distributed.make_mesh(jax.local_devices()[:1])
  full = one_step.take_step(_frozen(config, 8, 1), mesh, batch=8)
  micro = one_step.take_step(_frozen(config, 8, 2), mesh, batch=8)
  assert abs(float(full['loss']) - float(micro['loss'])) <= 1e-5
  assert _max_difference(full, micro) <= 1e-5


def test_accumulation_on_eight_devices_takes_the_full_batch_step(tmp_path):
  """8 simulated devices: a batch of 16 (2 images a device) in one step
  and as 2 micro-batches of 8 (one image a device each)."""
  out = tmp_path / 'step'
  done = subprocess.run(
      [sys.executable, '-m', 'tests.helpers.one_step', '--local_devices=8',
       '--backbone=toy', f'--out={out}.npz', f'--accumulate_out={out}'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
      check=False)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert done.stdout.count('devices 8') == 3, done.stdout
  full, micro = (dict(np.load(f'{out}_{kind}.npz'))
                 for kind in ('full', 'micro'))
  assert _max_difference(full, micro) <= 1e-5


def test_micro_batches_split_each_devices_block():
  """Micro-batch i takes its share of every device's rows, so that no
  image moves between devices."""
  batch = {'x': np.arange(8)}
  split = train_step.micro_batches(batch, 2, devices=2)['x']
  np.testing.assert_array_equal(split, [[0, 1, 4, 5], [2, 3, 6, 7]])


def test_a_per_device_batch_that_does_not_split_is_one_message():
  config = one_step.config_for('toy')
  config.train.batch_size = 6
  config.train.accumulate_steps = 4
  with pytest.raises(ConfigError, match=r'batch_size = 6 on 1 device\(s\) '
                     r'is 6 images per device, which config.train.'
                     r'accumulate_steps = 4 does not split .* multiple of 4'):
    train.Trainer(config, num_steps=2,
                  mesh=distributed.make_mesh(jax.local_devices()[:1]))


def _state(workdir, step):
  """Everything checkpoint `step` holds, flattened to host arrays, and its
  data position."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / 'checkpoints' / str(step)
  metadata = ocp.PyTreeCheckpointer().metadata(path / 'state').item_metadata
  raw = ocp.PyTreeCheckpointer().restore(
      path / 'state', args=ocp.args.PyTreeRestore(restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree)))
  data = (path / 'data' / 'process_0-of-1.json').read_text()
  # Restored without a target, an nnx Variable is a {'value': array}.
  return {'/'.join(k[:-1] if k[-1] == 'value' else k): np.asarray(v)
          for k, v in tree.flatten_state(raw).items()}, data


def _train_run(workdir, data_dir, *extra, wait=True):
  args = [sys.executable, '-m', 'tests.helpers.train_run', '--devices=1',
          f'--workdir={workdir}', f'--data_dir={data_dir}', '--num_steps=6',
          '--accumulate_steps=2', '--ema_decay=0.5', *extra]
  process = subprocess.Popen(args, cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  if not wait:
    return process
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output[-4000:]
  return output


@pytest.fixture(scope='module')
def straight_and_killed(demo_data_dir, tmp_path_factory):
  """6 steps of 2 accumulated micro-batches with an EMA (BatchNorm trained
  on each micro-batch), straight through, and killed with SIGKILL after a
  checkpoint past step 2 (perhaps inside the next save), then resumed."""
  folder = tmp_path_factory.mktemp('accumulate')
  straight, killed = folder / 'straight', folder / 'killed'
  _train_run(straight, demo_data_dir)
  process = _train_run(killed, demo_data_dir, wait=False)
  _wait_for_checkpoint_after(killed, 2, process)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  resumed = _train_run(killed, demo_data_dir)
  return straight, killed, resumed


def test_killed_and_resumed_accumulation_takes_the_straight_runs_steps(
    straight_and_killed):
  straight, killed, resumed = straight_and_killed
  assert 'Resuming from step' in resumed, resumed[-3000:]
  (want, want_data), (got, got_data) = (_state(straight, 6),
                                        _state(killed, 6))
  assert want_data == got_data  # The same batches were consumed.
  assert any(k.startswith('ema/params/') for k in want)
  assert want.keys() == got.keys()
  for key in want:  # Parameters, BatchNorm, optimizer state and the EMA.
    np.testing.assert_array_equal(want[key], got[key], err_msg=key)
  assert int(want['step']) == 6


def test_eval_on_an_ema_checkpoint_uses_and_names_the_ema_weights(
    straight_and_killed, demo_data_dir, capsys):
  straight, _, _ = straight_and_killed
  config = toy_demo_config.get_config()
  config.data.data_dir = str(demo_data_dir)
  saved, _ = _state(straight, 6)
  for weights in ('ema', 'raw'):
    config.eval.weights = weights
    model, step = checkpoints.restore_model(config, str(straight))
    out = capsys.readouterr().out
    assert step == 6
    assert ('Using the EMA weights of step 6' in out) == (weights == 'ema')
    prefix = 'ema/params/' if weights == 'ema' else 'params/'
    from flax import nnx  # pylint: disable=g-import-not-at-top
    params = tree.flatten_state(nnx.state(model, nnx.Param))
    for key, value in params.items():
      np.testing.assert_array_equal(np.asarray(value),
                                    saved[prefix + '/'.join(key)])
  # The command line says it too.
  done = subprocess.run(
      [sys.executable, 'main.py',
       '--config=tests/helpers/toy_demo_config.py', f'--workdir={straight}',
       '--mode=eval', f'--config.data.data_dir={demo_data_dir}',
       '--config.eval.max_images=2', f'--output={straight}/eval_ema'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
      check=False)
  assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
  assert 'Using the EMA weights of step 6' in done.stdout, done.stdout


# ------------------------------------------------------------------- EMA


def test_ema_equals_a_numpy_recomputation_from_the_parameter_history():
  decay = 0.75
  config = one_step.config_for('toy')
  config.train.ema_decay = decay
  trainer = train.Trainer(config, num_steps=10,
                          mesh=distributed.make_mesh(jax.local_devices()[:1]))
  trainer.place()

  def weights(state):
    return {'/'.join(k): np.asarray(v) for k, v in tree.flatten_state(
        {'params': state['params'], 'batch_stats': state['batch_stats']}
    ).items()}

  history = [weights({'params': trainer.state.params,
                      'batch_stats': trainer.state.batch_stats})]
  rng = np.random.default_rng(1)
  for _ in range(4):
    trainer.step({
        'image': rng.uniform(-1, 1, (8, 33, 33, 3)).astype(np.float32),
        'label': rng.integers(0, 5, (8, 33, 33)).astype(np.uint8)})
    history.append(weights({'params': trainer.state.params,
                            'batch_stats': trainer.state.batch_stats}))
  expected = {k: v.astype(np.float64) for k, v in history[0].items()}
  for snapshot in history[1:]:
    expected = {k: decay * expected[k] + (1 - decay) * snapshot[k]
                for k in expected}
  got = weights(trainer.state.ema)
  assert got.keys() == expected.keys()
  # The raw weights moved, the average lags them: a real average.
  assert _max_difference(history[-1], history[0]) > 1e-3
  assert _max_difference(got, history[-1]) > 1e-4
  assert _max_difference(got, expected) <= 1e-6


# --------------------------------------------- losses by name, W&B writer


def _wandb_history(workdir):
  """The history rows ({key: value}) of the W&B offline run under
  workdir/wandb, read from its .wandb file: LevelDB's log format (32 KiB
  blocks of records with a 7-byte header: CRC, length, type FULL=1,
  FIRST=2, MIDDLE=3, LAST=4) after a 7-byte file header (':W&B', 0xBEE1,
  version), each record a wandb_internal_pb2.Record."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  files = glob.glob(str(pathlib.Path(workdir) / 'wandb' / 'offline-run-*' /
                        'run-*.wandb'))
  assert len(files) == 1, files
  data = pathlib.Path(files[0]).read_bytes()
  assert data[:4] == b':W&B' and struct.unpack('<H', data[4:6])[0] == 0xBEE1
  rows, payload, position, block = [], b'', 7, 32768
  while position + 7 <= len(data):
    left = block - position % block
    if left < 7:  # A block's tail too short for a header is padding.
      position += left
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + 7])
    if kind == 0:
      position += left
      continue
    payload += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(payload)
      payload = b''
      if record.WhichOneof('record_type') == 'history':
        rows.append({item.key or '/'.join(item.nested_key):
                     json.loads(item.value_json)
                     for item in record.history.item})
  return rows


def _scalars(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  return {tag: {e.step: e.value for e in events.Scalars(tag)}
          for tag in events.Tags()['scalars']}


def test_a_two_term_loss_with_ema_logs_every_term_to_tensorboard_and_wandb(
    demo_data_dir, tmp_path, monkeypatch):
  """A 2-step run of cross_entropy + 0.5 dice with an EMA and both
  writers (W&B offline): each term and the total logged, training-time
  eval of both weights, the same metrics in the W&B run folder."""
  pytest.importorskip('wandb', reason='the wandb extra is not installed')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  config = toy_demo_config.get_config()
  config.data.data_dir = str(demo_data_dir)
  config.data.num_workers = 0
  config.data.crop_size = 33
  config.train.batch_size = 4
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.eval_every_steps = 2
  config.eval.max_images = 2
  config.eval.num_result_images = 0
  config.train.loss = (('cross_entropy', 1.0), ('dice', 0.5))
  config.train.ema_decay = 0.5
  config.train.writers = ('tensorboard', 'wandb')
  validate_config(config)
  workdir = tmp_path / 'run'
  train.train(config, str(workdir))
  scalars = _scalars(workdir)
  for step in (1, 2):
    total = (scalars['train/cross_entropy'][step] +
             0.5 * scalars['train/dice'][step] +
             scalars['train/weight_decay_loss'][step])
    assert abs(scalars['train/loss'][step] - total) <= 1e-5
    assert 0 < scalars['train/dice'][step] < 1
  assert 2 in scalars['eval/miou'] and 2 in scalars['eval_raw/miou']
  assert (workdir / 'eval' / 'metrics.json').is_file()
  assert (workdir / 'eval' / 'raw' / 'metrics.json').is_file()
  rows = _wandb_history(workdir)
  logged = {}
  for row in rows:
    logged.setdefault(row['_step'], {}).update(row)
  for key in ('train/loss', 'train/cross_entropy', 'train/dice'):
    assert logged[1][key] == pytest.approx(scalars[key][1], abs=1e-6), key
  assert logged[2]['eval/miou'] == pytest.approx(scalars['eval/miou'][2],
                                                 abs=1e-6)
  assert 'eval_raw/miou' in logged[2]


def test_without_wandb_the_writer_is_one_line_naming_the_extra(
    monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb fails.
  with pytest.raises(MissingDependencyError, match=r'pip install '
                     r'"\.\[wandb\]"'):
    metric_writers.MetricWriter(tmp_path, writers=('tensorboard', 'wandb'))


def test_a_wandb_run_id_stays_with_its_workdir_and_no_other(tmp_path):
  first, other = tmp_path / 'a' / 'voc', tmp_path / 'b' / 'voc'
  first.mkdir(parents=True)
  other.mkdir(parents=True)
  run_id = metric_writers._wandb_run_id(str(first), None)  # pylint: disable=protected-access
  assert run_id.startswith('voc-')
  assert metric_writers._wandb_run_id(str(first), None) == run_id  # pylint: disable=protected-access
  assert metric_writers._wandb_run_id(str(other), None) != run_id  # pylint: disable=protected-access


@pytest.mark.parametrize('value,terms', [
    ((('cross_entropy', 1.0), ('dice', 0.5)),
     (('cross_entropy', 1.0), ('dice', 0.5))),
    ([('focal', 1)], (('focal', 1.0),)),
    (('lovasz_softmax', 2.0), (('lovasz_softmax', 2.0),)),  # No comma.
    (('cross_entropy', 'dice'), (('cross_entropy', 1.0), ('dice', 1.0))),
])
def test_loss_terms_in_the_forms_a_command_line_gives(value, terms):
  assert losses.as_terms(value) == terms
  config = one_step.config_for('toy')
  config.train.loss = value
  validate_config(config)


@pytest.mark.parametrize('value,message', [
    ((('cross_entropy', 1.0), ('dise', 0.5)), "'dise'.*cross_entropy"),
    ((('dice', -1.0),), 'weights >= 0'),
    ((('dice', 0.0),), 'not all 0'),
    ((), 'e.g.'),
])
def test_a_bad_loss_is_one_message(value, message):
  config = one_step.config_for('toy')
  config.train.loss = value
  with pytest.raises(ConfigError, match=message):
    validate_config(config)
