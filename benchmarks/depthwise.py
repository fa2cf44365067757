"""Forward and backward time of the depthwise conv: shifted sum vs native.

MobileNetV2 depthwise layers at a 513x513 input, batch 4 by default:

    python benchmarks/depthwise.py [--batch=4] [--repeats=10] [--dtype=bfloat16]

On XLA:CPU the native `feature_group_count` convolution is slow; the shifted
sum (with its custom VJP) is what `depthwise_impl='auto'` uses there and on
GPUs in float32; 'shifted_forward' (the shifted sum forward, the native
conv's gradients) is what it uses on GPUs in bfloat16.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from deeplab_jax.ops.depthwise import depthwise_conv, shifted_sum_autodiff

# (name, spatial size, channels, stride, rate) at a 513 input, OS 16.
LAYERS = (
    ('block_1 dw (s2)', 257, 96, 2, 1),
    ('block_2 dw', 129, 144, 1, 1),
    ('block_14 dw (r2)', 33, 960, 1, 2),
)


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # Compile.
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'],
                      default='float32')
  args = parser.parse_args()
  print(f'backend: {jax.default_backend()}, devices: {jax.devices()}, '
        f'batch {args.batch}, {args.dtype}; best of {args.repeats}, '
        'milliseconds')
  print(f'{"layer":<18} {"impl":<15} {"forward":>9} {"fwd+bwd":>9}')
  for name, size, channels, stride, rate in LAYERS:
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (args.batch, size, size, channels), args.dtype)
    w = jax.random.normal(kw, (3, 3, 1, channels), args.dtype)
    results = {}
    # 'autodiff' is the shifted sum differentiated by JAX, without the
    # custom VJP, to show what the VJP buys.
    for impl in ('native', 'autodiff', 'shifted', 'shifted_forward'):
      def forward(x, w, impl=impl):
        if impl == 'autodiff':
          return shifted_sum_autodiff(x, w, (stride, stride), (rate, rate))
        return depthwise_conv(x, w, stride, rate, impl)
      def loss(x, w, forward=forward):
        return jnp.sum(forward(x, w).astype(jnp.float32) ** 2)
      fwd = _time(jax.jit(forward), x, w, repeats=args.repeats)
      bwd = _time(jax.jit(jax.grad(loss, (0, 1))), x, w,
                  repeats=args.repeats)
      results[impl] = (fwd, bwd)
      print(f'{name:<18} {impl:<15} {fwd:>9.2f} {bwd:>9.2f}')
    n, s = results['native'], results['shifted']
    print(f'{name:<18} {"speedup":<15} {n[0] / s[0]:>8.1f}x {n[1] / s[1]:>8.1f}x'
          '  (shifted vs native)')


if __name__ == '__main__':
  main()
