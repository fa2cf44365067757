"""Training input throughput on real VOC images (decode, scale, crop, flip,
batch), in images/s per core, for in-process and 1, 2 worker processes.

    python benchmarks/input_pipeline.py [--voc=../shared/data/voc2012_sample]
        [--crop_size=513] [--batch_size=8] [--batches=40]

It builds the TFDS dataset from the given VOC folder (or tars) into a
temporary data_dir first. Target: at least 60 images/s per core.
"""

import argparse
import os
import pathlib
import tempfile
import time

from deeplab_jax.config import default_config
from deeplab_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def measure(config, workers: int, batch_size: int, batches: int) -> float:
  loader = pipeline.train_loader(config, batch_size=batch_size,
                                 worker_count=workers)
  iterator = iter(loader)
  for _ in range(max(3, workers * 2)):  # Start the workers, fill buffers.
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--voc', default=str(REPO.parent / 'shared' / 'data' /
                                           'voc2012_sample'))
  parser.add_argument('--crop_size', type=int, default=513)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--batches', type=int, default=40)
  args = parser.parse_args()
  config = default_config()
  config.data.dataset = 'voc2012'
  config.data.manual_dir = args.voc
  config.data.crop_size = args.crop_size
  with tempfile.TemporaryDirectory() as data_dir:
    config.data.data_dir = data_dir
    pipeline.prepare_dataset(config.data)
    print(f'{os.cpu_count()} cores; crop {args.crop_size}, batch '
          f'{args.batch_size}, {args.batches} batches after warm-up')
    for workers in (0, 1, 2):
      rate = measure(config, workers, args.batch_size, args.batches)
      cores = max(workers, 1)
      label = 'in-process' if workers == 0 else f'{workers} worker(s)'
      print(f'{label:<12} {rate:7.1f} images/s  {rate / cores:7.1f} '
            'images/s per core')


if __name__ == '__main__':
  main()
