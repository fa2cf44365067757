"""Train-step throughput of a config on this machine's devices.

    python benchmarks/train_step.py --config=configs/voc.py --batch_size=8 \
        [--crop_size=513] [--steps=10] [--dtype=float32] \
        [--accumulate_steps=4]

Synthetic batches (the input pipeline is measured by input_pipeline.py), the
config's model and optimizer, one jitted data-parallel step; prints the
compile time and steps/s (and images/s) after warm-up, and the compiled
step's memory (XLA's buffer assignment: arguments, outputs and temporaries;
the temporaries are what accumulation shrinks) and the process's peak RSS.
"""

import argparse
import resource
import time

import jax
import numpy as np

from deeplab_jax import allocator, distributed, train
from deeplab_jax.config import load_config_file


def main():
  # As main.py runs: tcmalloc where the system has it.
  allocator.preload_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/voc.py')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--crop_size', type=int, default=None)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--dtype', default=None, choices=[None, 'float32',
                                                        'bfloat16'])
  parser.add_argument('--train_batch_norm', action='store_true',
                      help='BatchNorm on batch statistics at any batch size '
                      '(below config.train.batch_norm_min_batch images per '
                      'device it is frozen by default), as compare.py runs '
                      'it against PyTorch')
  parser.add_argument('--accumulate_steps', type=int, default=1,
                      help='micro-batches a step (config.train.'
                      'accumulate_steps)')
  parser.add_argument('--depthwise_impl', default=None,
                      choices=[None, 'auto', 'shifted', 'native'])
  args = parser.parse_args()
  config = load_config_file(args.config)
  config.train.batch_size = args.batch_size
  crop = args.crop_size or config.data.crop_size
  if args.dtype:
    config.model.dtype = args.dtype
  if args.depthwise_impl:
    config.model.depthwise_impl = args.depthwise_impl
  if args.train_batch_norm:
    config.train.batch_norm_min_batch = 1
  config.train.accumulate_steps = args.accumulate_steps
  trainer = train.Trainer(config, num_steps=1000)
  trainer.place()
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.uniform(-1, 1, (args.batch_size, crop, crop, 3)).astype(
          np.float32),
      'label': rng.integers(0, config.model.num_classes,
                            (args.batch_size, crop, crop)).astype(np.uint8),
  }
  memory = trainer.train_step.lower(
      trainer.state, distributed.to_global(batch, trainer.data_sharding)
  ).compile().memory_analysis()
  start = time.perf_counter()
  jax.block_until_ready(trainer.step(batch))
  compile_seconds = time.perf_counter() - start
  jax.block_until_ready(trainer.step(batch))  # Warm-up.
  start = time.perf_counter()
  for _ in range(args.steps):
    metrics = trainer.step(batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  print(f'{args.config}: {jax.device_count()} x {jax.devices()[0].device_kind}'
        f' ({jax.default_backend()}), batch {args.batch_size}, crop {crop}, '
        f'{config.model.dtype}, depthwise {config.model.depthwise_impl}, '
        f'{args.accumulate_steps} micro-batch(es); '
        f'{trainer.batch_norm_reason}')
  print(f'compile + first step {compile_seconds:.1f} s; {1 / seconds:.3f} '
        f'steps/s ({args.batch_size / seconds:.2f} images/s, '
        f'{seconds:.2f} s/step)')
  if memory is not None:
    mib = lambda n: n / 2**20  # noqa: E731
    print(f'compiled step: temporaries {mib(memory.temp_size_in_bytes):.0f} '
          f'MiB, arguments {mib(memory.argument_size_in_bytes):.0f} MiB, '
          f'outputs {mib(memory.output_size_in_bytes):.0f} MiB; peak RSS '
          f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} '
          'MiB')


if __name__ == '__main__':
  main()
