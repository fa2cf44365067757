"""Training: device-count invariance, multi-host, resume, preemption, NaN."""

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from deeplab_jax import checkpoints, losses, train, train_step
from deeplab_jax.weights import tree
from deeplab_jax.config import default_config
from deeplab_jax.errors import NonFiniteLossError
from deeplab_jax.models import backbones
from tests.conftest import tiny_model_config, voc_train_config
from tests.helpers import one_step
from tests.helpers.toy_backbone import ToyBackbone

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
  """The test environment (compile cache, fast-compile flag) for a child,
  without a simulated device count unless `extra` sets one."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags += extra.pop('XLA_FLAGS', '').split()
  env['XLA_FLAGS'] = ' '.join(flags)
  env.update(extra)
  return env


def _one_step(tmp_path, name, *args):
  out = tmp_path / f'{name}.npz'
  return out, subprocess.Popen(
      [sys.executable, '-m', 'tests.helpers.one_step', f'--out={out}', *args],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _wait(process, timeout=600):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-4000:]
  return output


def _assert_same_step(a, b, atol=1e-5):
  a, b = np.load(a), np.load(b)
  assert set(a.files) == set(b.files)
  assert abs(float(a['loss']) - float(b['loss'])) <= atol
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
  assert worst <= atol, worst


@pytest.fixture(scope='session')
def one_and_eight_devices(tmp_path_factory):
  """The same step on a mesh of 8 simulated devices and on one of them
  alone (the reference), in one process: (one.npz, eight.npz)."""
  folder = tmp_path_factory.mktemp('one_and_eight')
  one = folder / 'one.npz'
  eight, process = _one_step(folder, 'eight', '--local_devices=8',
                             f'--one_device_out={one}')
  output = _wait(process)
  assert 'devices 8' in output and 'devices 1' in output, output[-2000:]
  return one, eight


def test_one_device_and_eight_devices_take_the_same_step(
    one_and_eight_devices):
  one, eight = one_and_eight_devices
  _assert_same_step(one, eight)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_process_step(tmp_path, attempts=3):
  """Both processes of a 2-process cluster; a fresh port on each attempt,
  since another program may take the free port before the coordinator
  binds it."""
  for attempt in range(attempts):
    coordinator = f'127.0.0.1:{_free_port()}'
    runs = [
        _one_step(tmp_path, f'process{i}', '--num_processes=2',
                  f'--process_id={i}', f'--coordinator={coordinator}',
                  '--backbone=toy')
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for _, process in runs]
    if all(process.returncode == 0 for _, process in runs):
      return runs, outputs
    if attempt + 1 == attempts or not any(
        'in use' in out.lower() or 'bind' in out.lower() for out in outputs):
      pytest.fail('\n'.join(out[-3000:] for out in outputs))
  raise AssertionError('unreachable')


def test_two_processes_form_one_cluster_and_agree(tmp_path):
  """Two processes of one device each (the toy backbone: what a cluster
  adds, the coordinator and each host's share of the batch, does not
  depend on it; the 8-device test trains MobileNetV2)."""
  runs, outputs = _two_process_step(tmp_path)
  for output in outputs:
    assert 'devices 2' in output
  _assert_same_step(runs[0][0], runs[1][0], atol=0.0)  # Bit-identical.
  # Two hosts, each with its half of the batch == one device with all of it
  # (here, in this process).
  reference = tmp_path / 'one.npz'
  np.savez(reference, **one_step.take_step(one_step.config_for('toy')))
  _assert_same_step(runs[0][0], reference)


@pytest.fixture(autouse=True)
def _toy_backbone_registered(monkeypatch):
  """The checkpoint, resume and fault tests here train the two-convolution
  tests/helpers/toy_backbone.py: what they test does not depend on the
  backbone, and a MobileNetV2 step costs 2.5x the CPU to build and trace.
  The 1-vs-8-device and frozen-backbone tests keep MobileNetV2."""
  monkeypatch.setitem(backbones.BACKBONES, ToyBackbone.name, ToyBackbone)


@pytest.fixture(scope='module')
def voc_config(voc_prepared):
  config, _ = voc_prepared
  config = voc_train_config(config.data.data_dir, config.data.manual_dir)
  config.model.backbone = ToyBackbone.default_config()
  return config


def _saved(workdir, step):
  raw = checkpoints.read_weights(pathlib.Path(workdir) / 'checkpoints' /
                                 str(step))
  data = (pathlib.Path(workdir) / 'checkpoints' / str(step) / 'data' /
          'process_0-of-1.json').read_text()
  return raw, data


def test_four_steps_equal_two_plus_restart_plus_two(voc_config, tmp_path,
                                                  monkeypatch):
  # Runs of 30 steps (the poly schedule's length) cut short after step 4.
  straight = tmp_path / 'straight'
  config = voc_config.copy_and_resolve_references()
  assert train.train(config, str(straight), stop_after=4)['final_step'] == 4
  split = tmp_path / 'split'
  assert train.train(config, str(split), stop_after=2)['final_step'] == 2
  # The resumed run never builds a random initial state (only traces its
  # shapes, in Trainer.abstract_state).
  built, traced = [], []
  real_build, real_trace = (train.Trainer.initial_state,
                            train.Trainer.build_initial_state)

  def initial_state(self):
    built.append(True)
    return real_build(self)

  def build_initial_state(self):
    state = real_trace(self)
    traced.append(isinstance(state.step, jax.core.Tracer))
    return state
  monkeypatch.setattr(train.Trainer, 'initial_state', initial_state)
  monkeypatch.setattr(train.Trainer, 'build_initial_state',
                      build_initial_state)
  train.train(config, str(split), stop_after=4)  # Resumes from step 2.
  assert built == [] and traced == [True], (built, traced)
  for step in (2, 4):
    (weights_a, data_a), (weights_b, data_b) = (_saved(straight, step),
                                                _saved(split, step))
    assert data_a == data_b  # The same batches were consumed.
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
      np.testing.assert_array_equal(weights_a[key], weights_b[key])


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    voc_config, tmp_path, monkeypatch):
  class NanFromStep3(losses.CrossEntropy):  # The registered term, faulty.

    def numerator(self, logits, labels, context):
      loss = super().numerator(logits, labels, context)
      return jax.numpy.where(context.step >= 3, jax.numpy.nan, loss)

  monkeypatch.setitem(losses.LOSSES, 'cross_entropy', NanFromStep3())
  config = voc_config.copy_and_resolve_references()
  workdir = tmp_path / 'nan'
  with pytest.raises(NonFiniteLossError) as error:
    train.train(config, str(workdir))
  message = str(error.value)
  assert 'became nan at step 4' in message
  assert 'last good checkpoint (step 2' in message
  checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
  assert checkpointer.all_steps() == [2]
  weights, _ = _saved(workdir, 2)
  assert all(np.all(np.isfinite(v)) for v in weights.values())


def test_non_finite_state_with_a_finite_loss_is_never_kept(
    voc_config, tmp_path, monkeypatch):
  """The loss stays finite but the gradients turn NaN at step 4: the step
  is rejected, the kept checkpoint (step 2) is finite, evaluation would
  refuse a non-finite one, and resuming without the fault trains on."""
  class NanGradientsFromStep3(losses.CrossEntropy):

    def numerator(self, logits, labels, context):
      loss = super().numerator(logits, labels, context)
      # sqrt(0 * |x| + u) - u with u = 1 before step 3, 0 from it: the
      # value is always 0, the gradient 0 before and 0 * inf = NaN from
      # step 3.
      u = jax.numpy.where(context.step >= 3, 0.0, 1.0)
      return loss + jax.numpy.sqrt(
          jax.numpy.abs(jax.numpy.sum(logits)) * 0.0 + u) - u

  monkeypatch.setitem(losses.LOSSES, 'cross_entropy',
                      NanGradientsFromStep3())
  config = voc_config.copy_and_resolve_references()
  workdir = tmp_path / 'nan_state'
  with pytest.raises(NonFiniteLossError) as error:
    train.train(config, str(workdir))
  message = str(error.value)
  assert ('BatchNorm statistics or optimizer state became non-finite'
          in message and 'at step 4' in message), message
  assert 'last good checkpoint (step 2' in message
  model, step = checkpoints.restore_model(config, str(workdir))  # Finite.
  assert step == 2
  # A checkpoint with a NaN in it is refused by the inference loader.
  weights = tree.module_weights(model)
  assert all(np.all(np.isfinite(v)) for v in weights.values())
  monkeypatch.setitem(losses.LOSSES, 'cross_entropy', losses.CrossEntropy())
  result = train.train(config, str(workdir), stop_after=4)
  assert result['final_step'] == 4
  assert np.isfinite(result['train/loss'])


# The fault-injection tests' trainers: configs/demo.py with a two-layer
# backbone (tests/helpers/toy_backbone.py). Locks, checkpoints, resume and
# data workers do not depend on the backbone; a MobileNetV2 trainer took
# 2.5x the CPU to start (12-14 s vs 5 s), and these tests start 21.
TOY_CONFIG = '--config=tests/helpers/toy_demo_config.py'


def _main(workdir, config_args, **popen_kwargs):
  return subprocess.Popen(
      [sys.executable, 'main.py', TOY_CONFIG,
       f'--workdir={workdir}', *config_args],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, **popen_kwargs)


def _wait_for_checkpoint_after(workdir, after, process, timeout=300):
  """The step of the first complete checkpoint newer than `after`."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  deadline = time.time() + timeout
  while True:
    steps = [int(p.name) for p in directory.iterdir()
             if p.name.isdigit()] if directory.is_dir() else []
    newer = [step for step in steps if step > after]
    if newer:
      return max(newer)
    if process.poll() is not None:
      pytest.fail('training ended early:\n' + process.stdout.read()[-4000:])
    assert time.time() < deadline, 'no checkpoint in time'
    time.sleep(0.02)


def test_indivisible_batch_is_one_clear_message(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py',
       f'--workdir={tmp_path}', '--config.train.batch_size=6'],
      cwd=REPO, env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=4'),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert ('error: config.train.batch_size = 6 does not divide over the 4 '
          'devices') in result.stderr
  assert 'Traceback' not in result.stderr


def test_the_compiled_initial_state_is_the_eager_initialisers_one(
    monkeypatch):
  """Trainer builds step 0 with one compiled program (on CPU at XLA's
  lowest optimisation level); its weights are the ones the initialisers
  give run eagerly from config.seed, up to float rounding (measured at
  most 1.8e-7 on configs/voc.py), and the rest of the state is step 0."""
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 5})
  config.seed = 3
  trainer = train.Trainer(config, num_steps=10)
  jitted, real_jit = [], jax.jit

  def spy(fun, **kwargs):
    jitted.append((fun, kwargs))
    return real_jit(fun, **kwargs)
  monkeypatch.setattr(jax, 'jit', spy)
  state = trainer.state
  monkeypatch.undo()
  assert [(f, k) for f, k in jitted if f == trainer.build_initial_state] == [
      (trainer.build_initial_state,
       {'compiler_options': {'xla_backend_optimization_level': 0}})]
  eager = train.create_model(config.model, rngs=nnx.Rngs(config.seed))
  _, params, batch_stats = nnx.split(eager, nnx.Param, nnx.BatchStat)
  for built, reference in ((state.params, params),
                           (state.batch_stats, batch_stats)):
    built = tree.flatten_state(built)
    reference = tree.flatten_state(reference)
    assert built.keys() == reference.keys()
    for key, value in reference.items():
      np.testing.assert_allclose(built[key], value, rtol=0, atol=1e-6,
                                 err_msg=key)
  # Another seed gives other weights: the seed reaches the program.
  other = default_config()
  other.model = config.model
  other.seed = 4
  kernel = lambda t: next(v for k, v in tree.flatten_state(
      t.state.params).items() if k[-1] == 'kernel')
  assert not np.allclose(kernel(train.Trainer(other, num_steps=10)),
                         kernel(trainer))
  assert int(state.step) == 0
  np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(4))
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      trainer.tx.init(state.params))


def test_frozen_batch_norm_trains_on_moving_statistics():
  """freeze_batch_norm: the step normalises with the moving statistics
  (so the loss equals the inference-mode loss) and leaves them unchanged;
  unfrozen, the statistics move."""
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (8, 33, 33, 3)).astype(np.float32),
           'label': rng.integers(0, 5, (8, 33, 33)).astype(np.uint8)}
  # Copies: the step donates the state's buffers.
  stats = lambda t: {k: np.array(v) for k, v in
                     tree.flatten_state(t.state.batch_stats).items()}
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 5})
  config.model.backbone = ToyBackbone.default_config()
  config.train.batch_size = 8
  config.train.learning_rate = 0.05
  config.train.batch_norm_min_batch = 1
  moving = train.Trainer(config, num_steps=10)
  moving.place()
  before = stats(moving)
  moving.step(batch)
  assert any(not np.array_equal(before[k], v)
             for k, v in stats(moving).items())
  # Frozen, without dropout: the step's loss is then the model's loss.
  config.model.head.dropout_rate = 0.0
  config.train.freeze_batch_norm = True
  frozen = train.Trainer(config, num_steps=10)
  frozen.place()
  before = stats(frozen)
  logits = nnx.jit(lambda m, x: m(x))(  # Jitted: op by op took 10 s.
      nnx.view(frozen.model(), deterministic=True, use_running_average=True),
      batch['image'])
  expected = float(losses.softmax_cross_entropy(
      logits, batch['label'].astype(np.int32), ignore_label=255))
  metrics = frozen.step(batch)
  assert all(np.array_equal(before[k], v) for k, v in stats(frozen).items())
  assert float(metrics['cross_entropy']) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('freeze,batch,init_from,frozen,warns', [
    (None, 16, None, False, False),  # The reference recipe: BN trains.
    # Too few images per device, and random weights: frozen with a warning.
    (None, 4, None, True, True),
    (None, 4, 'mnv2_pascal_train_aug', True, False),  # Pretrained: no risk.
    (None, 16, 'model.tflite', True, False),  # Folded BatchNorm.
    (None, 16, 'mnv2_dm05_pascal_float_257', True, False),  # A TFLite name.
    (None, 16, 'mnv2_pascal_train_aug', False, False),  # TF checkpoint.
    (True, 16, None, True, True),
    (True, 16, 'mnv2_pascal_train_aug', True, False),
    (False, 4, None, False, True),  # Forced against the risk: a warning.
    (False, 16, 'model.tflite', False, True),
])
def test_batch_norm_policy(freeze, batch, init_from, frozen, warns):
  config = default_config()
  config.train.freeze_batch_norm = freeze
  config.train.batch_size = batch
  config.train.init_from = init_from
  got, reason, warning = train_step.batch_norm_policy(config, devices=1)
  assert got == frozen, reason
  assert (warning is not None) == warns
  if warns and not frozen:
    assert 'lose most of its accuracy' in warning
  if warns and frozen:
    assert 'starts from random weights' in warning
    assert ('--config.train.freeze_batch_norm=False' if freeze else
            '--config.train.batch_norm_min_batch=4') in warning
  if frozen and freeze is None:
    assert 'batch_norm_min_batch' in reason or 'folded' in reason
  # Per device: 16 over 4 devices is 4 images each.
  config.train.freeze_batch_norm, config.train.init_from = None, None
  config.train.batch_size = 16
  assert train_step.batch_norm_policy(config, devices=4)[0]


def test_a_second_trainer_on_the_workdir_gets_one_line(tmp_path):
  from deeplab_jax.workdir_lock import WorkdirLock  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with WorkdirLock(workdir):  # A trainer running.
    result = subprocess.run(
        [sys.executable, 'main.py', '--config=configs/demo.py',
         f'--workdir={workdir}'], cwd=REPO, env=_env(), capture_output=True,
        text=True, timeout=300)
  assert result.returncode == 1
  assert 'is being trained by another run (host ' in result.stderr
  assert f'pid {os.getpid()}' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'checkpoints').exists()
  assert not (workdir / 'config.json').exists()  # Not overwritten either.
  # Released: the lock file stays but binds nobody.
  with WorkdirLock(workdir):
    pass


@pytest.fixture
def unraisable(monkeypatch):
  """What Python would print as "Exception ignored in ..." during the test
  (collected at the end: abandoned reads report when they are freed)."""
  import gc  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)

  def collected():
    for _ in range(3):
      gc.collect()
      time.sleep(0.2)
    return [f'{u.exc_type.__name__}: {u.exc_value} in {u.object!r}'
            for u in seen]
  return collected


def test_resume_skips_an_incomplete_checkpoint_and_keeps_config_history(
    voc_config, tmp_path, capsys, unraisable):
  config = voc_config.copy_and_resolve_references()
  workdir = tmp_path / 'run'
  train.train(config, str(workdir), stop_after=4)
  # A checkpoint left half-written (its state holds only metadata), as two
  # trainers racing once produced.
  state = workdir / 'checkpoints' / '4' / 'state'
  for child in state.iterdir():
    if child.name not in ('_METADATA', 'commit_success.txt'):
      if child.is_dir():
        import shutil  # pylint: disable=g-import-not-at-top
        shutil.rmtree(child)
      else:
        child.unlink()
  config.train.log_every_steps = 2  # An allowed change: recorded.
  capsys.readouterr()
  result = train.train(config, str(workdir), stop_after=6)
  assert result['final_step'] == 6
  said = capsys.readouterr().out
  # The broken step 4 is named and skipped; the run resumes from step 2.
  assert 'Skipping: checkpoint' in said and '/checkpoints/4 is unusable' in said
  assert 'Resuming from step 2' in said
  assert 'config.2.json' in said
  history = workdir / 'config.2.json'
  assert history.exists()  # The config that trained up to step 2.
  assert '"log_every_steps": 5' in history.read_text()
  assert '"log_every_steps": 2' in (workdir / 'config.json').read_text()
  # And nothing else: no "Event loop is closed" tracebacks from abandoned
  # reads of the broken step (there were 20 at the command line).
  assert not unraisable()


def _children(pid):
  """PIDs whose parent is `pid` (from /proc)."""
  found = []
  for entry in pathlib.Path('/proc').iterdir():
    if entry.name.isdigit():
      try:
        fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        found.append(int(entry.name))
  return found


def _alive(pid):
  try:
    state = (pathlib.Path('/proc') / str(pid) / 'stat').read_text()
  except OSError:
    return False
  return state.rsplit(')', 1)[1].split()[0] != 'Z'


def _checkpoint_steps(workdir):
  directory = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit()) if directory.is_dir() else []


def _saving(workdir):
  """True while orbax writes a checkpoint (its temporary folder exists)."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  return directory.is_dir() and any(
      'orbax-checkpoint-tmp' in p.name for p in directory.iterdir())


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='parent-death signal and /proc are Linux only')
def test_kill_9_at_random_moments_loses_nothing_else(demo_data_dir, tmp_path):
  """kill -9 at 5 random moments and once inside a save, checkpointing
  every step (so that random kills land in a save too): every
  rerun resumes from a complete checkpoint at least as new as the last one
  seen, no data worker outlives its trainer, and /dev/shm keeps nothing of
  the run."""
  workdir = tmp_path / 'run'
  args = [f'--config.data.data_dir={demo_data_dir}',
          '--config.data.num_workers=1', '--config.train.num_steps=100000',
          '--config.train.checkpoint_every_steps=1',
          '--config.train.log_every_steps=1', '--config.train.batch_size=4',
          '--config.data.crop_size=49']
  moments = random.Random(0)
  floor = 0  # The newest checkpoint known complete before the last kill.
  on_disk = 0  # The newest step folder after the last kill.
  mapped = 0  # Shared-memory segments seen over all kills.
  for kill in range(7):
    log = tmp_path / f'run{kill}.log'
    with log.open('w') as out:
      process = subprocess.Popen(
          [sys.executable, 'main.py', TOY_CONFIG,
           f'--workdir={workdir}', *args], cwd=REPO, env=_env(), stdout=out,
          stderr=subprocess.STDOUT, text=True)
    try:
      # Running, resumed, and past a save of its own.
      newest = _wait_for_checkpoint_after(workdir, on_disk, process)
    except BaseException:
      process.kill()
      raise
    output = log.read_text()
    if kill:
      resumed = [line for line in output.splitlines()
                 if line.startswith('Resuming from step')]
      assert resumed, output[-3000:]
      assert int(resumed[0].split()[3]) >= floor, (resumed, floor)
    assert 'Traceback' not in output, output[-3000:]
    if kill == 6:  # The last run stops cleanly: the resumed run is sound.
      process.send_signal(signal.SIGTERM)
      assert process.wait(timeout=120) == 75, log.read_text()[-3000:]
      assert 'Stopped by SIGTERM at step' in log.read_text()
      break
    if kill == 5:  # Once for certain inside a save.
      deadline = time.time() + 60
      while not _saving(workdir) and time.time() < deadline:
        time.sleep(0.001)
    else:
      time.sleep(moments.uniform(0.0, 1.5))
    workers = [p for p in _children(process.pid) if _alive(p)]
    assert workers, 'expected a grain worker process'
    # The shared-memory segments this run maps (other tests may run beside
    # this one, with segments of their own).
    segments = _shared_memory_segments([process.pid, *workers])
    mapped += len(segments)
    process.kill()
    process.wait(timeout=60)
    floor, on_disk = newest, max(_checkpoint_steps(workdir))
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
      time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for pid in survivors:  # Do not leak them past a failing test.
      os.kill(pid, signal.SIGKILL)
    assert not survivors, f'kill {kill}: a worker outlived its parent'
    while time.time() < deadline:
      left = [s for s in segments if os.path.exists(s)]
      if not left:
        break
      time.sleep(0.2)
    assert not left, f'kill {kill}: /dev/shm still holds {sorted(left)[:5]}'
  assert mapped, 'expected the workers to pass batches through /dev/shm'


def _shared_memory_segments(pids) -> set[str]:
  """/dev/shm files the processes have mapped now (from /proc/PID/maps)."""
  found = set()
  for pid in pids:
    try:
      maps = pathlib.Path(f'/proc/{pid}/maps').read_text()
    except OSError:
      continue
    for line in maps.splitlines():
      path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ''
      if path.startswith('/dev/shm/'):
        found.add(path.removesuffix(' (deleted)'))
  return found


def test_a_checkpoint_of_another_model_is_one_short_message(voc_config,
                                                           tmp_path,
                                                           unraisable):
  config = voc_config.copy_and_resolve_references()
  workdir = tmp_path / 'run'
  train.train(config, str(workdir), stop_after=2)
  config.model.head.channels = 8  # Another head width.
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train(config, str(workdir), stop_after=4)
  message = str(error.value)
  assert 'does not fit this config: shapes differ' in message, message
  assert 'head/aspp0/conv/kernel' in message or 'head/' in message
  assert len(message) < 1000, len(message)  # Not orbax's metadata tree.
  assert (workdir / 'config.json').exists()
  assert '"channels": 16' in (workdir / 'config.json').read_text()
  # Eval too, through the weights-only loader.
  with pytest.raises(checkpoints.CheckpointError,
                     match='does not fit this config: shapes differ'):
    checkpoints.restore_model(config, str(workdir))
  config.model.head.channels = voc_config.model.head.channels
  config.model.decoder.type = 'upsample'  # Fewer arrays: not silently.
  with pytest.raises(checkpoints.CheckpointError, match=r'it has \d+ arrays '
                     r'this config lacks, e\.g\. \S*decoder'):
    checkpoints.restore_model(config, str(workdir))
  assert not unraisable()  # Nothing printed after the one message.


def test_a_full_disk_while_saving_is_one_message(voc_config, tmp_path,
                                                 monkeypatch):
  config = voc_config.copy_and_resolve_references()
  workdir = tmp_path / 'run'
  train.train(config, str(workdir), stop_after=2)
  real_save = checkpoints.ocp.CheckpointManager.save

  def disk_full(self, step, *args, **kwargs):
    if step >= 4:
      raise OSError(28, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'save', disk_full)
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train(config, str(workdir), stop_after=6)
  assert str(error.value).startswith('The disk is full: writing checkpoint '
                                     'step 4')
  assert 'checkpoint step 2 in' in str(error.value)
  assert 'is intact' in str(error.value)
  assert checkpoints.Checkpointer(workdir, read_only=True).all_steps() == [2]


def test_freeze_backbone_trains_only_the_head_decoder_and_classifier():
  rng = np.random.default_rng(1)
  batch = {'image': rng.uniform(-1, 1, (8, 33, 33, 3)).astype(np.float32),
           'label': rng.integers(0, 5, (8, 33, 33)).astype(np.uint8)}
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 5})
  config.model.backbone = ToyBackbone.default_config()
  config.train.batch_size = 8
  config.train.learning_rate = 0.05
  config.train.batch_norm_min_batch = 1
  config.train.freeze_backbone = True
  config.train.class_weights = [1.0, 2.0, 1.0, 3.0, 1.0]
  trainer = train.Trainer(config, num_steps=10)
  trainer.place()
  flat = lambda state: {k: np.array(v) for k, v in
                        tree.flatten_state(state).items()}
  params, stats = flat(trainer.state.params), flat(trainer.state.batch_stats)
  trainer.step(batch)
  new_params = flat(trainer.state.params)
  new_stats = flat(trainer.state.batch_stats)
  for before, after in ((params, new_params), (stats, new_stats)):
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert not {k for k in moved if k[0] == 'backbone'}  # Fixed.
    rest = {k for k in before if k[0] != 'backbone'}
    assert len(moved) >= 0.9 * len(rest), sorted(rest - moved)  # Trained.
  assert ('logits', 'kernel') in {k for k in params if not np.array_equal(
      params[k], new_params[k])}


def test_a_frozen_backbone_is_not_differentiated_and_the_rest_steps_alike():
  """freeze_backbone stops the gradients at the backbone: the step's
  FLOPs fall (XLA drops the backbone's backward pass) and the head's,
  decoder's and classifier's update is the one the whole-network step
  makes (BatchNorm frozen and no dropout, so both see the same
  activations)."""
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (8, 33, 33, 3)).astype(np.float32),
           'label': rng.integers(0, 5, (8, 33, 33)).astype(np.uint8)}
  flat = lambda state: {k: np.array(v) for k, v in
                        tree.flatten_state(state).items()}
  params, flops = {}, {}
  for frozen in (False, True):
    config = default_config()
    config.model = tiny_model_config(**{'num_classes': 5})
    config.model.head.dropout_rate = 0.0
    config.train.batch_size = 8
    config.train.learning_rate = 0.05
    config.train.batch_norm_min_batch = 1
    config.train.freeze_batch_norm = True
    config.train.freeze_backbone = frozen
    trainer = train.Trainer(config, num_steps=10)
    trainer.place()
    # The lowered program's cost (before XLA's passes): what JAX's
    # differentiation emitted, without compiling the step a second time.
    cost = trainer.train_step.lower(
        trainer.state, jax.device_put(batch, trainer.data_sharding)
    ).cost_analysis()
    flops[frozen] = (cost[0] if isinstance(cost, list) else cost)['flops']
    before = flat(trainer.state.params)
    trainer.step(batch)
    params[frozen] = flat(trainer.state.params)
  # Compiled, 62.5 vs 168.3 MFLOP (167.6 when the gradient was computed
  # and only the update zeroed).
  assert flops[True] < 0.5 * flops[False], flops
  backbone = [k for k in before if k[0] == 'backbone']
  assert backbone and all(np.array_equal(params[True][k], before[k])
                          for k in backbone)
  assert any(not np.array_equal(params[False][k], before[k])
             for k in backbone)
  rest = [k for k in before if k[0] != 'backbone']
  for k in rest:
    np.testing.assert_allclose(params[True][k], params[False][k], atol=1e-7,
                               err_msg=str(k))
  assert sum(not np.array_equal(params[True][k], before[k])
             for k in rest) >= 0.9 * len(rest)


def test_a_folded_backbone_is_frozen_unless_forced_with_a_warning():
  """Automatic: a TFLite export's backbone (BatchNorm folded) is frozen,
  with a reason; forcing it to train warns; other weights train whole."""
  config = default_config()
  config.train.init_from = 'mnv2_dm05_pascal_float_257'  # TFLite: folded.
  frozen, reason, warning = train_step.backbone_policy(config)
  assert frozen and warning is None
  assert 'folded' in reason and 'freeze_backbone=False' in reason
  config.train.freeze_backbone = False
  frozen, reason, warning = train_step.backbone_policy(config)
  assert not frozen and reason is None
  assert 'lose its features' in warning and 'unset' in warning
  config.train.freeze_backbone = True
  assert train_step.backbone_policy(config) == (
      True, 'Backbone frozen (config.train.freeze_backbone=True).', None)
  config.train.freeze_backbone = None
  config.train.init_from = 'mnv2_pascal_train_aug'  # Unfolded TF checkpoint.
  assert train_step.backbone_policy(config) == (False, None, None)
  config.train.init_from = None
  assert train_step.backbone_policy(config) == (False, None, None)
