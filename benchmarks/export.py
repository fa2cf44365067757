"""Exported files against their sources, side by side, in one process.

    python benchmarks/export.py [--rounds=5] [--runs=20] [--threads=2]

Imports the official float dm0.5 257 model (../shared/models, or --tflite),
exports it as float TFLite and ONNX, then alternates, round after round:
  * the official .tflite vs our .tflite export, both under LiteRT (XNNPACK);
  * our JAX model under XLA (eval.cpu_runtime=xla) vs our .onnx under
    onnxruntime;
timing `--runs` single-image calls each per round, and prints the medians,
min-max and the ratios. Same thread count for every runtime.
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL = REPO.parent / 'shared/models/deeplabv3_257_mv_gpu.tflite'


def _litert(path, threads, image):
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=str(path), num_threads=threads)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], image)
  return interpreter.invoke


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tflite', default=str(OFFICIAL))
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  import jax
  import onnxruntime
  from flax import nnx
  from deeplab_jax import export
  from deeplab_jax.models import inference_view
  from deeplab_jax.weights import pretrained

  config = pretrained.config_for('mnv2_dm05_pascal_float_257')
  model = pretrained.load_model_file(args.tflite, config)
  image = np.random.default_rng(0).uniform(-1, 1, (1, 257, 257, 3)).astype(
      np.float32)
  tmp = tempfile.mkdtemp()
  ours_tflite = export.export(model, config, 'tflite', f'{tmp}/m.tflite')
  ours_onnx = export.export(model, config, 'onnx', f'{tmp}/m.onnx')

  graphdef, state = nnx.split(inference_view(model))
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  jax_image = jax.device_put(image)
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = args.threads
  options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(ours_onnx, options,
                                         providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  pairs = {
      'TFLite under LiteRT: ours / official': (
          _litert(ours_tflite, args.threads, image),
          _litert(args.tflite, args.threads, image)),
      'JAX model / our ONNX under onnxruntime': (
          lambda: jax.block_until_ready(forward(state, jax_image)),
          lambda: session.run(None, {name: image})),
  }
  print(f'{args.threads} thread(s), {args.rounds} rounds x {args.runs} '
        f'calls, alternating; 1x257x257, official float dm0.5 OS8 model')
  for label, functions in pairs.items():
    for f in functions:  # Compile and warm up.
      for _ in range(3):
        f()
    times = ([], [])
    for _ in range(args.rounds):
      for f, t in zip(functions, times):
        for _ in range(args.runs):
          start = time.perf_counter()
          f()
          t.append(time.perf_counter() - start)
    medians = [statistics.median(t) * 1e3 for t in times]
    print(f'{label}: {medians[0]:.2f} ms ({min(times[0]) * 1e3:.2f}-'
          f'{max(times[0]) * 1e3:.2f}) / {medians[1]:.2f} ms '
          f'({min(times[1]) * 1e3:.2f}-{max(times[1]) * 1e3:.2f}) = '
          f'{medians[0] / medians[1]:.2f}')


if __name__ == '__main__':
  main()
