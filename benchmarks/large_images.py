"""Large images: seconds and peak resident memory of `--mode=predict` per
image size and inference mode, each case in its own process under
`/usr/bin/time -v`.

    python benchmarks/large_images.py                       # the table
    python benchmarks/large_images.py --sizes=6000x4000 --modes=slide

The model is the official float dm0.5 MobileNetV2 (OS 8, from
../shared/models/deeplabv3_257_mv_gpu.tflite, or --weights=FILE) at
native scale; the images are smooth synthetic photos (their content does
not change the work). Whole mode beyond `eval.max_whole_pixels` stops with
its one-line message, which the table shows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(os.path.dirname(REPO), 'shared', 'models',
                       'deeplabv3_257_mv_gpu.tflite')


def synthetic_photo(width: int, height: int, path: str) -> None:
  """A smooth colour field with shapes, written as JPEG in row bands."""
  rng = np.random.default_rng(0)
  image = np.empty((height, width, 3), np.uint8)
  xs = np.linspace(0, 6 * np.pi, width, dtype=np.float32)
  for top in range(0, height, 1024):
    ys = np.linspace(top, min(top + 1024, height) - 1,
                     min(1024, height - top), dtype=np.float32)[:, None]
    for c in range(3):
      wave = np.sin(xs[None] * (c + 1) / 3 + ys / 300.0 * (c + 2))
      image[top:top + len(ys), :, c] = (127 + 120 * wave).astype(np.uint8)
  for _ in range(20):
    y, x = rng.integers(0, height), rng.integers(0, width)
    r = int(rng.integers(50, max(51, min(height, width) // 6)))
    image[max(0, y - r):y + r, max(0, x - r):x + r] = rng.integers(
        0, 255, 3, dtype=np.uint8)
  Image.fromarray(image).save(path, quality=90)


def run_case(size: tuple[int, int], mode: str, weights: str, tile: int,
             stride: int | None, work: str) -> dict:
  width, height = size
  folder = os.path.join(work, f'{width}x{height}')
  os.makedirs(folder, exist_ok=True)
  photo = os.path.join(folder, 'photo.jpg')
  if not os.path.exists(photo):
    synthetic_photo(width, height, photo)
  output = os.path.join(work, f'out_{width}x{height}_{mode}')
  command = [
      '/usr/bin/time', '-v', sys.executable, os.path.join(REPO, 'main.py'),
      '--config=' + os.path.join(REPO, 'configs', 'voc_pretrained.py'),
      f'--config.train.init_from={weights}', '--config.eval.input_scale=native',
      f'--config.eval.mode={mode}', f'--config.eval.tile_size={tile}',
      '--mode=predict', f'--images={photo}', f'--output={output}']
  if stride:
    command.append(f'--config.eval.tile_stride={stride}')
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  peak = re.search(r'Maximum resident set size \(kbytes\): (\d+)',
                   done.stderr)
  row = {'size': f'{width}x{height}', 'megapixels': width * height / 1e6,
         'mode': mode, 'exit': done.returncode,
         'peak_gb': int(peak.group(1)) / 2**20 if peak else None,
         'process_seconds': seconds}
  summary = os.path.join(output, 'predictions.json')
  if done.returncode == 0 and os.path.exists(summary):
    info = json.load(open(summary))['files']['photo.jpg']
    row.update(segment_seconds=info['seconds'], tiles=info['tiles'],
               run_mode=info['mode'],
               mp_per_s=width * height / 1e6 / info['seconds'])
  else:
    lines = [l for l in done.stderr.splitlines() if l.startswith('error:')]
    row['message'] = lines[-1] if lines else done.stderr[-500:]
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='1000x750,3000x2000,6000x4000,'
                      '10000x8000')
  parser.add_argument('--modes', default='slide,whole')
  parser.add_argument('--weights', default=WEIGHTS)
  parser.add_argument('--tile', type=int, default=513)
  parser.add_argument('--stride', type=int, default=None)
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes.split(',')]
  rows = []
  with tempfile.TemporaryDirectory() as work:
    for size in sizes:
      for mode in args.modes.split(','):
        row = run_case(size, mode, args.weights, args.tile, args.stride,
                       work)
        rows.append(row)
        print(json.dumps(row), flush=True)
  print('\n| image | MP | mode | peak RSS | segment s | MP/s | tiles | exit |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['size']} | {r['megapixels']:.1f} | {r['mode']} | "
          f"{r['peak_gb']:.2f} GB | {r.get('segment_seconds', '-')} | "
          f"{r.get('mp_per_s', 0):.2f} | {r.get('tiles', '-')} | "
          f"{r['exit']} {r.get('message', '')[:80]} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
