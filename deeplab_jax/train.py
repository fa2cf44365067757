"""Training: the Trainer (model, optimizer, the sharded step of
train_step.py) and the loop: orbax resume, evaluation, metric writers.

The train step runs on a 1-D mesh over every device of every process: the
global batch is sharded on the 'data' axis, parameters are replicated, and
XLA inserts the gradient and BatchNorm all-reduces, so BatchNorm statistics
are those of the global batch and a step gives the same numbers on one
device or eight.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from deeplab_jax import (allocator, checkpoints, distributed, evaluate,
                         metric_writers, optim, stopping, workdir_lock)
from deeplab_jax.data import pipeline
from deeplab_jax.data.datasets import class_names
from deeplab_jax.errors import (CheckpointError, ConfigError,
                                NonFiniteLossError)
from deeplab_jax.models import create_model, with_output_stride
from deeplab_jax.train_step import (TrainState, backbone_policy,
                                    batch_norm_policy, make_train_step)
from deeplab_jax.weights import pretrained, tree


# ---------------------------------------------------------------- setup


class Trainer:
  """Model, optimizer, sharded jitted step and state for one config.

  Kept separate from the loop so that tests and notebooks can run single
  steps on given batches.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_steps: int,
               mesh: jax.sharding.Mesh | None = None,
               class_weights: np.ndarray | None = None):
    self.config = config
    self.num_steps = num_steps
    self.mesh = mesh or distributed.make_mesh()
    # The structure only: a run that resumes replaces the initial state
    # whole, so it is built (randomly initialised, by a program compiled
    # for it: see initial_state) only when first used.
    model = nnx.eval_shape(
        lambda: create_model(config.model, rngs=nnx.Rngs(config.seed)))
    self.graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    self.masks = optim.parameter_masks(model, params,
                                       config.train.regularize_depthwise)
    self.freeze_backbone, backbone_reason, backbone_warning = (
        backbone_policy(config))
    self.tx = optim.create_optimizer(config.train, num_steps, self.masks,
                                     freeze_backbone=self.freeze_backbone)
    self.schedule = optim.learning_rate_schedule(config.train, num_steps)
    self._state: TrainState | None = None
    self.replicated = distributed.replicated(self.mesh)
    self.data_sharding = distributed.data_sharding(self.mesh)
    self.freeze_batch_norm, self.batch_norm_reason, warning = (
        batch_norm_policy(config, self.mesh.devices.size))
    logging.info('%s', self.batch_norm_reason)
    if backbone_reason:
      logging.info('%s', backbone_reason)
    for warning in (warning, backbone_warning):
      if warning:
        logging.warning('%s', warning)
    if class_weights is None and isinstance(config.train.class_weights,
                                            (list, tuple)):
      class_weights = np.asarray(config.train.class_weights, np.float32)
    devices = self.mesh.devices.size
    count = config.train.accumulate_steps
    if (config.train.batch_size // devices) % count:
      raise ConfigError(
          f'config.train.batch_size = {config.train.batch_size} on {devices} '
          f'device(s) is {config.train.batch_size // devices} images per '
          f'device, which config.train.accumulate_steps = {count} does not '
          f'split into equal micro-batches: use a batch size that is a '
          f'multiple of {devices * count}.')
    if count > 1:
      logging.info(
          'Accumulating %d micro-batches of %d image(s) per device a step; '
          'BatchNorm %s.', count, config.train.batch_size // devices // count,
          'frozen' if self.freeze_batch_norm else
          "normalises each micro-batch by its own statistics and updates its "
          "moving averages once per micro-batch")
    step_fn = make_train_step(self.graphdef, self.tx, config, self.masks,
                              self.schedule, self.freeze_batch_norm,
                              class_weights,
                              freeze_backbone=self.freeze_backbone,
                              devices=devices)
    self.train_step = jax.jit(
        step_fn, in_shardings=(self.replicated, self.data_sharding),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def build_initial_state(self) -> TrainState:
    """Step 0: the model randomly initialised from config.seed (traceable;
    `initial_state` compiles it, `abstract_state` only traces it)."""
    config = self.config
    model = create_model(config.model, rngs=nnx.Rngs(config.seed))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    ema = ({'params': params, 'batch_stats': batch_stats}
           if config.train.ema_decay > 0 else None)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=batch_stats, opt_state=self.tx.init(params),
        rng=jax.random.PRNGKey(config.seed + 1), ema=ema)

  def initial_state(self) -> TrainState:
    """`build_initial_state` as one compiled program.

    Run eagerly, each initialiser compiles a small program of its own (the
    demo's trainer: 15.6 s to build its state, 6.1 s this way). On CPU the
    program is compiled at XLA's lowest backend optimisation level, as it
    runs once; the command line's compilation cache keeps it for the next
    fresh run of the same model.
    """
    options = ({'xla_backend_optimization_level': 0}
               if jax.default_backend() == 'cpu' else None)
    return jax.jit(self.build_initial_state, compiler_options=options)()

  @property
  def state(self) -> TrainState:
    """The train state; the initial one is built on first use."""
    if self._state is None:
      self._state = self.initial_state()
    return self._state

  @state.setter
  def state(self, state: TrainState) -> None:
    self._state = state

  def abstract_state(self) -> Any:
    """The state's shapes and dtypes, without building it, replicated over
    this run's devices (a checkpoint written on others restores onto
    them)."""
    if self._state is not None:
      shapes = jax.eval_shape(lambda: self._state)
    else:
      shapes = jax.eval_shape(self.build_initial_state)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=self.replicated), shapes)

  def place(self) -> None:
    """Puts the state on the devices, replicated."""
    self.state = jax.device_put(self.state, self.replicated)

  def load_weights(self, source: str, scope: str) -> dict:
    """config.train.init_from: weights only, from a checkpoint or a
    pretrained source (see deeplab_jax.weights)."""
    weights = pretrained.read_init_weights(source, self.config)
    params, batch_stats, report = tree.copy_matching(
        self.state.params, self.state.batch_stats, weights, scope=scope)
    ema = (None if self.state.ema is None else
           {'params': params, 'batch_stats': batch_stats})
    self.state = self.state.replace(params=params, batch_stats=batch_stats,
                                    ema=ema)
    return report

  def step(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """One step on a host batch (this process's share of the global batch,
    which must divide over the devices); returns the metrics."""
    batch = distributed.to_global(batch, self.data_sharding)
    self.state, metrics = self.train_step(self.state, batch)
    return metrics

  def model(self, output_stride: int | None = None) -> nnx.Module:
    """The current model (BatchNorm in training mode), optionally rebuilt
    for another output stride."""
    model = nnx.merge(self.graphdef, self.state.params,
                      self.state.batch_stats)
    if output_stride and output_stride != self.config.model.output_stride:
      model = with_output_stride(model, self.config.model, output_stride)
    return model


def _check_finite(step: int, metrics: dict[str, jax.Array],
                  checkpointer: checkpoints.Checkpointer) -> None:
  if bool(metrics['finite']):
    return
  checkpointer.wait()
  last = checkpointer.latest_step()
  kept = (f'The last good checkpoint (step {last}, {checkpointer.path(last)}) '
          'is kept and was not overwritten'
          if last is not None else 'No checkpoint had been written yet')
  loss = float(metrics['loss'])
  what = (f'The training loss became {loss}' if not np.isfinite(loss) else
          f'The parameters, BatchNorm statistics or optimizer state became '
          f'non-finite (loss {loss:.4g})')
  raise NonFiniteLossError(
      f'{what} at step {step}; training stopped and that step was not '
      f'applied. {kept}. Lower config.train.learning_rate (or add '
      'warmup_steps), check the data, then run again: it resumes from the '
      'last checkpoint.')


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_after: int | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it has a checkpoint).

  Args:
    config: the full config.
    workdir: checkpoints, config.json and TensorBoard files go here.
    stop_after: stop (as if preempted: checkpoint, clean exit) once this
      step is done, e.g. to split a run over time-limited jobs.

  Returns:
    The last logged training metrics and the final step.
  """
  workdir_path = epath.Path(workdir)
  try:
    workdir_path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise CheckpointError(f'Cannot create the workdir {workdir} '
                          f'({e.strerror}): pass a writable --workdir.'
                          ) from None
  # One trainer per workdir (process 0 holds the lock for the cluster).
  lock = (workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock:
    return _train(config, workdir, stop_after)


def _say_topology_change(written_on: dict[str, int] | None,
                         data_restored: bool, step: int) -> str | None:
  """One line when the checkpoint was written on other devices or
  processes (the state is restored onto this run's devices either way)."""
  here = checkpoints.topology()
  if not written_on or all(written_on.get(k, v) == v
                           for k, v in here.items()):
    return None

  def describe(t):
    parts = []
    if 'devices' in t:
      parts.append(f'{t["devices"]} device{"s" * (t["devices"] != 1)}')
    parts.append(f'{t["processes"]} process{"es" * (t["processes"] != 1)}')
    return ', '.join(parts)

  line = (f'The checkpoint of step {step} was written on '
          f'{describe(written_on)}; this run has {describe(here)}: the '
          'state is restored onto these devices')
  if written_on.get('processes') != here['processes']:
    line += ('; the data position cannot carry over to another process '
             f'count, so training continues from step {step} with a new '
             'data order.')
  elif data_restored:
    line += '; the data position carries over.'
  else:
    line += '.'
  logging.warning('%s', line)
  print(line, flush=True)
  return line


def _record_config(workdir: str, config: ml_collections.ConfigDict,
                   resumed_from: int | None) -> None:
  """config.json describes the checkpoints: written once the run has
  really started; a resumed run with another config keeps the previous one
  as config.<step>.json (the config that trained up to that step)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / 'config.json'
  text = config.to_json_best_effort(indent=2)
  if path.exists() and resumed_from is not None:
    previous = path.read_text()
    if previous != text:
      (epath.Path(workdir) / f'config.{resumed_from}.json').write_text(
          previous)
      print(f'The config differs from the one that trained up to step '
            f'{resumed_from}: that one is kept as config.{resumed_from}.json',
            flush=True)
  path.write_text(text)


def _train(config: ml_collections.ConfigDict, workdir: str,
           stop_after: int | None) -> dict[str, Any]:
  mesh = distributed.make_mesh()
  local_batch_size = distributed.per_process_batch_size(
      config.train.batch_size, mesh)
  source = pipeline.data_source(config.data, config.data.train_split)
  num_steps = optim.num_train_steps(config.train, len(source))
  if config.train.num_epochs is not None:
    print(f'config.train.num_epochs = {config.train.num_epochs} gives '
          f'{num_steps} steps of {config.train.batch_size} on {len(source)} '
          f'images; config.train.num_steps ({config.train.num_steps}) is not '
          'used (set --config.train.num_epochs=None to use it).', flush=True)
  class_weights = None
  if config.train.class_weights == 'inverse_frequency':
    class_weights = pipeline.inverse_frequency_weights(
        config.data, source, config.model.num_classes)
    print('config.train.class_weights = inverse_frequency: ' + ', '.join(
        f'{name} {w:.3g}' for name, w in zip(class_names(config),
                                             class_weights)), flush=True)
  trainer = Trainer(config, num_steps, mesh, class_weights)
  checkpointer = checkpoints.Checkpointer(
      workdir, max_to_keep=config.train.keep_checkpoints)
  data_iterator = iter(pipeline.train_loader(
      config, batch_size=local_batch_size, source=source))

  try:
    restored = checkpointer.restore_newest(trainer.abstract_state(),
                                           data_iterator)
  except BaseException:
    checkpointer.close()
    raise
  state, latest = restored.state, restored.step
  for note in restored.notes:
    logging.warning('%s', note)
    print(f'Skipping: {note}.', flush=True)
  if latest is not None:
    trainer.state = state
    logging.info('Resuming from step %d (checkpoint: %s).', latest,
                 checkpointer.path(latest))
    print(f'Resuming from step {latest} (checkpoint: '
          f'{checkpointer.path(latest)})', flush=True)
    _say_topology_change(restored.written_on, restored.data_restored, latest)
    if not restored.data_restored:  # Said above: a new order from here.
      distributed.close_iterator(data_iterator)
      data_iterator = iter(pipeline.train_loader(
          config, batch_size=local_batch_size, source=source,
          seed=config.seed + latest))
  elif config.train.init_from:
    report = trainer.load_weights(config.train.init_from,
                                  config.train.init_from_scope)
    logging.info('init_from %s: loaded %d arrays; kept %d initial (shape '
                 'differs: %s)', config.train.init_from, report['loaded'],
                 len(report['skipped']), ', '.join(report['skipped'][:5]))
  trainer.place()
  _record_config(workdir, config, latest)

  writer = metric_writers.MetricWriter(
      workdir, just_logging=jax.process_index() > 0,
      writers=config.train.writers, name=epath.Path(workdir).name)
  if latest is None:
    writer.write_hparams({
        k: v for k, v in _flatten_config(config).items()
        if isinstance(v, (int, float, str, bool))
    })
  report_progress = metric_writers.ProgressReport(
      num_train_steps=num_steps, writer=writer,
      every_steps=config.train.log_every_steps,
      first_step=int(trainer.state.step))
  prefetcher = distributed.Prefetcher(
      data_iterator,
      lambda batch: distributed.to_global(batch, trainer.data_sharding))

  # Built once: every evaluation during training reuses its compiled step.
  evaluator = (evaluate.Evaluator(config) if config.train.eval_every_steps
               else None)
  step = int(trainer.state.step)
  logging.info('Training %s from step %d to %d, global batch %d on %d '
               'device(s); %d data worker(s)%s; memory allocator: %s.',
               config.model.head.type, step, num_steps,
               config.train.batch_size, trainer.mesh.devices.size,
               pipeline.resolve_workers(config.data.num_workers),
               ' (auto)' if config.data.num_workers < 0 else '',
               allocator.preloaded() or 'the system malloc')
  pending: tuple[int, dict] | None = None
  window: list[dict[str, jax.Array]] = []
  last_logged: dict[str, Any] = {'step': step}
  t = config.train
  try:
    with stopping.StopFlag() as stop:
      while step < num_steps:
        batch, data_state = next(prefetcher)
        trainer.state, metrics = trainer.train_step(trainer.state, batch)
        step += 1
        # Check the previous step's loss: one step behind keeps dispatch
        # asynchronous while still naming the exact step.
        if pending is not None:
          _check_finite(*pending, checkpointer)
        pending = (step, metrics)
        window.append(metrics)
        report_progress(step)
        should_stop = stop.any_process() or step == stop_after
        if step % t.log_every_steps == 0 or step == num_steps or should_stop:
          _check_finite(step, metrics, checkpointer)
          last_logged.update(_write_train_metrics(writer, step, window))
          window = []
        if step % t.checkpoint_every_steps == 0 or step == num_steps or (
            should_stop):
          _check_finite(step, metrics, checkpointer)
          checkpointer.save(step, trainer.state, data_state)
        if should_stop:
          checkpointer.wait()
          why = (stop.raised or 'another process') if step != stop_after \
              else 'stop_after'
          last_logged['stopped'] = why
          logging.warning('Stopped by %s at step %d; saved checkpoint %s.',
                          why, step, checkpointer.path(step))
          break
        if evaluator is not None and step % t.eval_every_steps == 0:
          last_logged.update(_evaluate_during_training(
              evaluator, trainer.state, config, workdir, step, writer))
    if jax.process_index() == 0 and step > int(latest or 0):
      checkpointer.verify(step)  # Success only with a usable last step.
  finally:
    # Every exit path (an error included) closes what it opened, so a
    # failure prints its one message and nothing else.
    prefetcher.close()
    writer.close()
    checkpointer.close()
  last_logged.update(final_step=step, num_steps=num_steps)
  return last_logged


def _evaluate_during_training(evaluator: Any, state: TrainState,
                              config: ml_collections.ConfigDict,
                              workdir: str, step: int, writer: Any
                              ) -> dict[str, Any]:
  """Both weights when the state has an EMA: `eval.weights`' into
  <workdir>/eval and TensorBoard's eval/, the other into eval/<kind>/ and
  eval_<kind>/."""
  candidates = {'raw': (state.params, state.batch_stats)}
  if state.ema is not None:
    candidates['ema'] = (state.ema['params'], state.ema['batch_stats'])
  main = config.eval.weights if config.eval.weights in candidates else 'raw'
  logged = {}
  for kind, weights in candidates.items():
    primary = kind == main
    out_dir = os.path.join(workdir, 'eval', '' if primary else kind)
    summary = evaluator.evaluate(weights, out_dir=out_dir, step=step,
                                 writer=writer,
                                 tag='eval' if primary else f'eval_{kind}')
    logged['eval' if primary else f'eval_{kind}'] = dict(
        {k: summary[k] for k in ('miou', 'pixel_accuracy', 'images',
                                 'step')}, weights=kind)
  return logged


def _flatten_config(config: Any, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flatten_config(value, name + '.'))
    else:
      flat[name] = value
  return flat


def _write_train_metrics(writer: Any, step: int,
                         window: list[dict[str, jax.Array]]
                         ) -> dict[str, Any]:
  window = jax.device_get(window)
  names = [k for k in window[0] if k not in ('finite', 'state_finite')]
  means = {f'train/{k}': float(np.mean([m[k] for m in window]))
           for k in names}
  writer.write_scalars(step, means)
  return dict(means, step=step)
