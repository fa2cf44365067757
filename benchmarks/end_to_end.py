"""main.py's real training loop against its synthetic step, in images/s.

    python benchmarks/end_to_end.py [--config=configs/voc.py] [--batch_size=4]
        [--crop_size=321] [--steps=30] [--log_every=5] [--pipeline]
        [--voc=../shared/data/voc2012_sample --dataset=voc2012] [--dtype=...]

1. Prepares the VOC folder (or tars) into a temporary data_dir.
2. Runs `main.py` on it as a user does (a subprocess: the real input
   pipeline with the worker count it picks, checkpoints, TensorBoard
   writes, progress lines) for --steps steps, and reads its "steps/s"
   lines; the first interval holds compilation and is left out.
3. Times the same config's jitted step on one synthetic batch already on
   the devices (what train_step.py and compare.py measure).
4. With --pipeline, the input pipeline alone (in-process, 1 and 2 workers).

It prints both rates, their ratio (real / synthetic: the share of the step's
speed the real loop keeps) and the pipeline's images/s per core. On a CPU the
step is the bottleneck; on a GPU the ratio says whether the input keeps up.
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from deeplab_jax import allocator

REPO = pathlib.Path(__file__).resolve().parents[1]


def overrides(args) -> list[str]:
  """--config.KEY=VALUE flags shared by the real run and the synthetic
  step."""
  flags = [f'--config.data.dataset={args.dataset}',
           f'--config.train.batch_size={args.batch_size}',
           f'--config.data.crop_size={args.crop_size}']
  if args.dtype:
    flags.append(f'--config.model.dtype={args.dtype}')
  return flags


def real_loop(args, data_dir: str, workdir: str) -> list[float]:
  """Images/s of each progress interval after the first."""
  command = [
      sys.executable, str(REPO / 'main.py'), f'--config={args.config}',
      f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
      f'--config.train.num_steps={args.steps}',
      f'--config.train.log_every_steps={args.log_every}',
      f'--config.train.checkpoint_every_steps={args.checkpoint_every}',
      *overrides(args)]
  start = time.perf_counter()
  run = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                       check=False)
  log = run.stdout + run.stderr
  if run.returncode != 0:
    raise SystemExit(f'main.py exited with {run.returncode}:\n{log[-3000:]}')
  rates = [float(m) for m in re.findall(r'([0-9.]+) steps/s', log)]
  print(f'real loop: {args.steps} steps in {time.perf_counter() - start:.0f} '
        's (process start, compilation and the final save included)')
  return [r * args.batch_size for r in rates[1:]]


def synthetic_step(args) -> tuple[float, float]:
  """(compile seconds, images/s) of the config's step on one batch."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from deeplab_jax import distributed, train  # pylint: disable=import-outside-toplevel
  from deeplab_jax.config import load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(str(REPO / args.config))
  config.train.batch_size = args.batch_size
  config.data.crop_size = args.crop_size
  if args.dtype:
    config.model.dtype = args.dtype
  trainer = train.Trainer(config, num_steps=100_000)
  trainer.place()
  rng = np.random.default_rng(0)
  size = args.crop_size
  batch = distributed.to_global({
      'image': rng.uniform(-1, 1, (args.batch_size, size, size, 3)).astype(
          np.float32),
      'label': rng.integers(0, config.model.num_classes,
                            (args.batch_size, size, size)).astype(np.uint8)},
      trainer.data_sharding)
  start = time.perf_counter()
  trainer.state, metrics = trainer.train_step(trainer.state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(args.synthetic_steps):
    start = time.perf_counter()
    trainer.state, metrics = trainer.train_step(trainer.state, batch)
    jax.block_until_ready((trainer.state, metrics))
    times.append(time.perf_counter() - start)
  return compile_seconds, args.batch_size / statistics.median(times)


def pipeline_rates(args, data_dir: str) -> None:
  sys.path.insert(0, str(REPO / 'benchmarks'))
  from input_pipeline import measure  # pylint: disable=import-outside-toplevel
  from deeplab_jax.config import load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(str(REPO / args.config))
  config.data.dataset = args.dataset
  config.data.data_dir = data_dir
  config.data.crop_size = args.crop_size
  for workers in (0, 1, 2):
    rate = measure(config, workers, args.batch_size, 40)
    label = 'in-process' if workers == 0 else f'{workers} worker(s)'
    print(f'  pipeline {label:<12} {rate:7.1f} images/s  '
          f'{rate / max(workers, 1):7.1f} per core')


def main():
  # As main.py runs: tcmalloc where the system has it.
  allocator.preload_tcmalloc()
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--config', default='configs/voc.py')
  parser.add_argument('--voc', default=str(REPO.parent / 'shared' / 'data' /
                                           'voc2012_sample'))
  parser.add_argument('--dataset', default='voc2012',
                      help="what the --voc folder holds (voc.py's "
                      "voc2012_aug needs the SBD archive too)")
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--crop_size', type=int, default=321)
  parser.add_argument('--dtype', default=None,
                      choices=[None, 'float32', 'bfloat16'])
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--log_every', type=int, default=5)
  parser.add_argument('--checkpoint_every', type=int, default=1000,
                      help="the real run's checkpoint interval (it always "
                      'saves at the end)')
  parser.add_argument('--synthetic_steps', type=int, default=10)
  parser.add_argument('--pipeline', action='store_true',
                      help='also the input pipeline alone, per core')
  args = parser.parse_args()
  from deeplab_jax.config import load_config_file  # pylint: disable=import-outside-toplevel
  from deeplab_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  print(f'{os.cpu_count()} cores; {args.config}, batch {args.batch_size}, '
        f'crop {args.crop_size}, {args.dtype or "config dtype"}')
  with tempfile.TemporaryDirectory() as data_dir, \
      tempfile.TemporaryDirectory() as workdir:
    config = load_config_file(str(REPO / args.config))
    config.data.dataset = args.dataset
    config.data.data_dir = data_dir
    config.data.manual_dir = args.voc
    pipeline.prepare_dataset(config.data)
    real = real_loop(args, data_dir, workdir)
    compile_seconds, synthetic = synthetic_step(args)
    if not real:
      raise SystemExit('main.py printed fewer than two progress lines: give '
                       'more --steps or a smaller --log_every')
    median = statistics.median(real)
    workers = pipeline.resolve_workers(config.data.num_workers)
    print(f'real loop  {median:7.2f} images/s (median of {len(real)} '
          f'intervals of {args.log_every} steps, {min(real):.2f}-'
          f'{max(real):.2f}; {workers} data workers)')
    print(f'synthetic  {synthetic:7.2f} images/s (compiled in '
          f'{compile_seconds:.1f} s)')
    print(f'real / synthetic = {median / synthetic:.2f}')
    if args.pipeline:
      pipeline_rates(args, data_dir)


if __name__ == '__main__':
  main()
