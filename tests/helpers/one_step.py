"""Runs one train step of a tiny model on a fixed synthetic global batch and
saves the loss and the new parameters (for the device-count tests).

    python -m tests.helpers.one_step --local_devices=8 --out=a.npz \
        [--one_device_out=b.npz]
    python -m tests.helpers.one_step --num_processes=2 --process_id=0 \
        --coordinator=127.0.0.1:PORT --backbone=toy --out=p0.npz

--one_device_out also takes the step on a mesh of this process's first
device alone (the reference, without starting a process for it).
--backbone=toy trains tests/helpers/toy_backbone.py's two convolutions
instead of MobileNetV2 (what a cluster of processes adds does not depend
on the backbone; MobileNetV2 is what the 8-device test trains).
"""

import argparse
import os


def config_for(backbone: str):
  """The step's config: a tiny MobileNetV2 or the toy backbone."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_model_config  # pylint: disable=g-import-not-at-top
  from tests.helpers import toy_backbone  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 5})
  if backbone == 'toy':  # Registered by the caller.
    config.model.backbone = toy_backbone.ToyBackbone.default_config()
  config.train.batch_size = 8
  config.train.learning_rate = 0.05
  # Train BatchNorm (its statistics must be the global batch's on any
  # number of devices), though the per-device batch is small.
  config.train.batch_norm_min_batch = 1
  return config


def take_step(config, mesh=None, batch=8) -> dict:
  """{'loss', 'params/...', 'batch_stats/...': array} after one step of a
  `batch`-image batch on `mesh` (default: all devices of the cluster),
  each process feeding its share of the global batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deeplab_jax import train  # pylint: disable=g-import-not-at-top
  from deeplab_jax.weights import tree  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, 33, 33, 3)).astype(np.float32)
  labels = rng.integers(0, 5, (batch, 33, 33)).astype(np.uint8)
  labels[:, :4] = 255
  labels[::3, 10:20] = 255  # Images with fewer labelled pixels.
  processes = 1 if mesh is not None else jax.process_count()
  share = batch // processes
  lo = (0 if mesh is not None else jax.process_index()) * share
  trainer = train.Trainer(config, num_steps=10, mesh=mesh)
  trainer.place()
  metrics = trainer.step({'image': images[lo:lo + share],
                          'label': labels[lo:lo + share]})
  local = lambda x: np.asarray(x.addressable_data(0))  # Replicated.
  arrays = {'loss': local(metrics['loss'])}
  for group in ('params', 'batch_stats'):
    state = getattr(trainer.state, group)
    for key, value in tree.flatten_state(state).items():
      arrays[group + '/' + '/'.join(key)] = local(value)
  print('devices', trainer.mesh.devices.size, 'loss', float(arrays['loss']))
  return arrays


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--local_devices', type=int, default=1)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--coordinator', default=None)
  parser.add_argument('--backbone', default='mobilenet_v2',
                      choices=['mobilenet_v2', 'toy'])
  parser.add_argument('--out', required=True)
  parser.add_argument('--one_device_out', default=None)
  parser.add_argument('--accumulate_out', default=None,
                      help='Also: a batch of 16 with BatchNorm frozen, in '
                      'one step (OUT_full.npz) and as 2 micro-batches.')
  args = parser.parse_args()
  # Must precede the first JAX import.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  os.environ['XLA_FLAGS'] = ' '.join(
      flags + [f'--xla_force_host_platform_device_count={args.local_devices}'])
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deeplab_jax import distributed  # pylint: disable=g-import-not-at-top

  if args.num_processes > 1:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  if args.backbone == 'toy':
    from tests.helpers import toy_backbone  # pylint: disable=g-import-not-at-top
    toy_backbone.register()
  config = config_for(args.backbone)
  np.savez(args.out, **take_step(config))
  if args.one_device_out:
    np.savez(args.one_device_out, **take_step(
        config, distributed.make_mesh(jax.local_devices()[:1])))
  if args.accumulate_out:
    config.train.freeze_batch_norm = True
    config.model.head.dropout_rate = 0.0
    config.train.batch_size = 16
    np.savez(args.accumulate_out + '_full.npz',
             **take_step(config, batch=16))
    config.train.accumulate_steps = 2
    np.savez(args.accumulate_out + '_micro.npz',
             **take_step(config, batch=16))


if __name__ == '__main__':
  main()
