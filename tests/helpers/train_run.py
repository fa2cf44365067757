"""Trains tests/helpers/toy_demo_config.py's model on the demo dataset in a
process of its own, on a given number of simulated devices (set before JAX
starts), for the device-count resume tests.

    python -m tests.helpers.train_run --devices=2 --workdir=W \
        --data_dir=D --num_steps=6 [--stop_after=3]

Prints the process's stdout as the trainer does; the test reads the losses
from the workdir's TensorBoard files.
"""

import argparse
import json
import os


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--devices', type=int, required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--num_steps', type=int, required=True)
  parser.add_argument('--stop_after', type=int, default=None)
  parser.add_argument('--accumulate_steps', type=int, default=1)
  parser.add_argument('--ema_decay', type=float, default=0.0)
  parser.add_argument('--loss', default=None, help='JSON [[name, weight]]')
  args = parser.parse_args()
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={args.devices}')
  os.environ['XLA_FLAGS'] = ' '.join(flags)
  # pylint: disable=g-import-not-at-top
  import jax
  from deeplab_jax import train
  from tests.helpers import toy_demo_config
  assert jax.device_count() == args.devices
  config = toy_demo_config.get_config()
  config.data.data_dir = args.data_dir
  config.data.num_workers = 0
  config.data.crop_size = 33
  config.train.batch_size = 4
  config.train.num_steps = args.num_steps
  config.train.checkpoint_every_steps = 1
  config.train.log_every_steps = 1
  config.train.eval_every_steps = 0
  # BatchNorm trained on the global batch's statistics on any number of
  # devices, so that every device count takes the same steps.
  config.train.batch_norm_min_batch = 1
  config.train.accumulate_steps = args.accumulate_steps
  config.train.ema_decay = args.ema_decay
  if args.loss:
    config.train.loss = [tuple(t) for t in json.loads(args.loss)]
  result = train.train(config, args.workdir, stop_after=args.stop_after)
  print(f'final step {result["final_step"]}, devices {jax.device_count()}',
        flush=True)


if __name__ == '__main__':
  main()
