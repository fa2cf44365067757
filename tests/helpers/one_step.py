"""Runs one train step of a tiny model on a fixed synthetic global batch and
saves the loss and the new parameters (for the device-count tests).

    python -m tests.helpers.one_step --local_devices=8 --out=a.npz \
        [--one_device_out=b.npz]
    python -m tests.helpers.one_step --num_processes=2 --process_id=0 \
        --coordinator=127.0.0.1:PORT --out=p0.npz

--one_device_out also takes the step on a mesh of this process's first
device alone (the reference, without starting a process for it).
"""

import argparse
import os


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--local_devices', type=int, default=1)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--coordinator', default=None)
  parser.add_argument('--out', required=True)
  parser.add_argument('--one_device_out', default=None)
  args = parser.parse_args()
  # Must precede the first JAX import.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  os.environ['XLA_FLAGS'] = ' '.join(
      flags + [f'--xla_force_host_platform_device_count={args.local_devices}'])
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deeplab_jax import checkpoints, distributed, train  # pylint: disable=g-import-not-at-top
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_model_config  # pylint: disable=g-import-not-at-top

  if args.num_processes > 1:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 5})
  config.train.batch_size = 8
  config.train.learning_rate = 0.05
  # Train BatchNorm (its statistics must be the global batch's on any
  # number of devices), though the per-device batch is small.
  config.train.batch_norm_min_batch = 1
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (8, 33, 33, 3)).astype(np.float32)
  labels = rng.integers(0, 5, (8, 33, 33)).astype(np.uint8)
  labels[:, :4] = 255
  share = 8 // jax.process_count()
  lo = jax.process_index() * share
  runs = [(args.out, None)]
  if args.one_device_out:
    runs.append((args.one_device_out,
                 distributed.make_mesh(jax.local_devices()[:1])))
  for out, mesh in runs:
    trainer = train.Trainer(config, num_steps=10, mesh=mesh)
    trainer.place()
    metrics = trainer.step({'image': images[lo:lo + share],
                            'label': labels[lo:lo + share]})
    local = lambda x: np.asarray(x.addressable_data(0))  # Replicated.
    arrays = {'loss': local(metrics['loss'])}
    for group in ('params', 'batch_stats'):
      state = getattr(trainer.state, group)
      for key, value in checkpoints.flatten_state(state).items():
        arrays[group + '/' + '/'.join(key)] = local(value)
    np.savez(out, **arrays)
    print('devices', trainer.mesh.devices.size, 'loss',
          float(arrays['loss']))


if __name__ == '__main__':
  main()
