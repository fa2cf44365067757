"""Ours against the peers, side by side, on this machine, in one run.

    pip install -r benchmarks/requirements.txt     # torch, torchvision (CPU or CUDA)
    python benchmarks/compare.py                   # CPU: 2 threads each
    python benchmarks/compare.py --device=gpu      # GPU: fp32 and bf16, batch 16

What it times (synthetic inputs; the input pipeline is measured by
input_pipeline.py):
  train/B   one SGD-momentum train step of DeepLabV3+ MobileNetV2 (the
            configs/voc.py model: ASPP 6/12/18, decoder), B images of CxC,
            output stride 16, BatchNorm training on batch statistics in both;
            ours is deeplab_jax.train.Trainer's jitted step, the peers
            benchmarks/torch_deeplab.py in PyTorch eager and compiled
            (torch.compile, inductor; SGD momentum, cross-entropy with
            ignore_index).
  infer     the same network's forward pass (inference mode), 1xCxC; the
            compiled peer with inductor's freezing (BatchNorm folded into
            the convolutions, as our inference path folds it).
  train_resnet50  the train step of configs/voc_resnet50.py (ResNet-50 v1
            beta, multi_grid 1/2/4, same head and decoder) against the same
            network in PyTorch eager (torch_deeplab.ResNetV1Beta); on the
            GPU by default, on the CPU with --only=train_resnet50.
  tflite    the official float dm0.5 OS8 257 model: ours (the same
            architecture from configs/voc_pretrained.py, its inference path)
            against LiteRT (XNNPACK) on the .tflite file, each call setting
            the image and reading the logits.

Ours' inference runs as eval and predict run it: on a CPU
`eval.cpu_runtime='auto'` chooses XLA or LiteRT on an in-memory
conversion in the first call (the row names the engine); the variant
'eval.cpu_runtime=xla' times XLA alone.

How: every (framework, task) runs in its own long-lived worker process
(all of them with tcmalloc preloaded where the system has it, as main.py
runs; DEEPLAB_JAX_ALLOCATOR=system for glibc's malloc),
pinned to the same `--threads` cores (torch.set_num_threads, LiteRT
num_threads, sched_setaffinity for all). The workers compile and warm up
first; then the parent asks them in turn, `--rounds` times, for `--steps`
timed steps each, so that the peers alternate and share the machine's
drift. It prints the median, min-max, images/s, the first call (set-up and
compilation, for every framework), the ratio ours/peer of the medians (and
of the fastest calls), the machine and thread counts.

Peers (--peers): `eager` (PyTorch eager), `compile` (torch.compile, default
mode), `max-autotune` (torch.compile mode='max-autotune': minutes of
compilation on a CPU, so not by default there).

--one_at_a_time instead starts, warms up, times and stops each worker in
turn every round, so that only the one being timed is resident. On this
2-core, 23 GB machine the resident peer slowed ours (batch 8) from 8.4 to
12.3 s a step while PyTorch went from 8.7 to 9.7 s: compare both modes.
With tcmalloc, which keeps what it frees, three resident workers at batch 8
outgrow 23 GB (the kernel kills one): use --one_at_a_time there.

    --only=train,infer,tflite[,train_resnet50]   --batch_sizes=4,8   --crop=513
    --peers=eager,compile[,max-autotune]
    --rounds=3 --steps=3 --infer_steps=20   --threads=2   --json=OUT.json
    --one_at_a_time             --variants=';--xla_cpu_...;model.KEY=VALUE'
    --trace=DIR                 (profiles of each worker, untimed)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL_FLOAT_257 = REPO.parent / 'shared/models/deeplabv3_257_mv_gpu.tflite'


# ------------------------------------------------------------------ workers


def _pin(threads: int) -> None:
  """Every worker gets the same cores, so that no peer has more."""
  cores = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cores)


class OursTrain:

  def __init__(self, batch: int, crop: int, dtype: str,
               config_file: str = 'configs/voc.py',
               overrides: tuple[str, ...] = ()):
    import jax
    import numpy as np
    from deeplab_jax import distributed, train
    from deeplab_jax.config import load_config_file
    config = load_config_file(str(REPO / config_file))
    config.train.batch_size = batch
    config.data.crop_size = crop
    config.model.dtype = dtype
    apply_overrides(config, overrides)
    # BatchNorm trains on batch statistics, as the peer's does.
    config.train.batch_norm_min_batch = 1
    self.trainer = train.Trainer(config, num_steps=100_000)
    self.trainer.place()
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.uniform(-1, 1, (batch, crop, crop, 3)).astype(np.float32),
        'label': rng.integers(0, 21, (batch, crop, crop)).astype(np.uint8)}
    # On the devices once, as the peer's tensors are: in training the
    # prefetcher copies the next batch while the step runs.
    self.batch = distributed.to_global(batch, self.trainer.data_sharding)
    self._jax = jax

  def __call__(self):
    t = self.trainer
    t.state, metrics = t.train_step(t.state, self.batch)
    self._jax.block_until_ready((t.state, metrics))

  def peak_bytes(self):
    return _jax_peak_bytes(self._jax)


def apply_overrides(config, overrides) -> None:
  """'model.depthwise_impl=shifted' -> config.model.depthwise_impl; values
  are Python literals where they parse as one, else strings."""
  import ast
  for item in overrides:
    key, _, text = item.partition('=')
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise SystemExit(f'variant {item!r}: the config has no {key}')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node[leaf] = value


def _jax_peak_bytes(jax):
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


class OursInfer:
  """The inference path: the model in inference mode, jitted once."""

  def __init__(self, batch: int, crop: int, dtype: str,
               pretrained: str | None = None,
               overrides: tuple[str, ...] = ()):
    import jax
    import numpy as np
    from flax import nnx
    from deeplab_jax import inference
    from deeplab_jax.config import load_config_file
    from deeplab_jax.inference import engines
    from deeplab_jax.models import create_model
    from deeplab_jax.weights.pretrained import config_for
    if pretrained:
      config = config_for(pretrained)
      output_stride = config.eval.output_stride
    else:
      config = load_config_file(str(REPO / 'configs/voc.py'))
      output_stride = config.model.output_stride
    config.model.dtype = dtype
    apply_overrides(config, overrides)
    model = create_model(config.model, output_stride=output_stride,
                         rngs=nnx.Rngs(0))
    # What predict runs: the inference copy with BatchNorm folded into the
    # convolutions (inference.folded), its weights as arguments flattened
    # once, compiled by inference.jit (on CPU, XLA's own matrix products
    # rather than YNNPACK's).
    # On a CPU, eval.cpu_runtime ('auto': the faster of XLA and LiteRT on
    # an in-memory conversion, chosen in the first call) runs it, as in
    # eval and predict.
    graphdef, state = nnx.split(inference.folded(model))
    state, treedef = jax.tree.flatten(state)

    def forward(state, x):
      return (nnx.merge(graphdef, jax.tree.unflatten(treedef, state))(x),)

    self.program = engines.Program(forward, inference.jit(forward),
                                   config.eval.cpu_runtime)
    images = np.random.default_rng(0).uniform(
        -1, 1, (batch, crop, crop, 3)).astype(np.float32)
    self.run = lambda: jax.block_until_ready(self.program(state, images))
    self.first = lambda: self.program.prepare(state, images)
    self._jax = jax

  def __call__(self):
    if self.first is not None:
      self.first()
      self.first = None
      return
    self.run()

  def engine(self) -> str:
    return self.program.engine()

  def peak_bytes(self):
    return _jax_peak_bytes(self._jax)


class TorchWorker:

  def __init__(self, task: str, batch: int, crop: int, dtype: str,
               threads: int, device: str, channels_last: bool,
               compile_mode: str | None = None):
    import torch
    sys.path.insert(0, str(REPO / 'benchmarks'))
    from torch_deeplab import DeepLabV3Plus
    torch.set_num_threads(threads)
    # The peer at its best: cuDNN picks its fastest algorithms.
    torch.backends.cudnn.benchmark = True
    self.torch = torch
    self.device = torch.device('cuda' if device == 'gpu' else 'cpu')
    model = DeepLabV3Plus(
        backbone='resnet50' if task == 'train_resnet50' else 'mobilenet_v2'
    ).to(self.device)
    memory_format = (torch.channels_last if channels_last
                     else torch.contiguous_format)
    model = model.to(memory_format=memory_format)
    images = torch.rand(batch, 3, crop, crop, device=self.device) * 2 - 1
    images = images.contiguous(memory_format=memory_format)
    autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                if dtype == 'bfloat16' else _nothing())
    if task.startswith('train'):
      labels = torch.randint(0, 21, (batch, crop, crop), device=self.device)
      optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9,
                                  weight_decay=4e-5)
      model.train()
      if compile_mode:
        # Forward and backward compiled (AOTAutograd); the optimizer's
        # foreach update stays eager, as torch.compile's tutorial runs it.
        model = torch.compile(model, mode=compile_mode)

      def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
          logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels,
                                                 ignore_index=255)
        loss.backward()
        optimizer.step()
        return loss
    else:
      model.eval()
      if compile_mode:
        # Freezing folds BatchNorm into the convolutions and makes the
        # weights constants, as our inference path does.
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
        model = torch.compile(model, mode=compile_mode)

      def step():
        with torch.inference_mode(), autocast:
          return model(images)
    self.step = step

  def __call__(self):
    self.step()
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def peak_bytes(self):
    if self.device.type == 'cuda':
      return self.torch.cuda.max_memory_allocated()
    return None

  def trace(self, path: pathlib.Path, steps: int) -> None:
    """`steps` calls under torch.profiler; writes its table of kernels
    and ops by self time (device time on a GPU) to `path`.txt."""
    from torch.profiler import ProfilerActivity, profile
    cuda = self.device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
      for _ in range(steps):
        self()
    sort_by = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    path.with_suffix('.txt').write_text(prof.key_averages().table(
        sort_by=sort_by, row_limit=80, max_name_column_width=90))


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


class LiteRTWorker:
  """The official file as a program uses it: each call sets the image,
  invokes and reads the logits (the read, a copy of 257x257x21 floats,
  is 0.4 of its 7.7 ms here), as ours does through LiteRT."""

  def __init__(self, model_path: str, threads: int):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    self.interpreter = Interpreter(model_path=model_path, num_threads=threads)
    self.interpreter.allocate_tensors()
    detail = self.interpreter.get_input_details()[0]
    self.input = detail['index']
    self.output = self.interpreter.get_output_details()[0]['index']
    self.image = np.random.default_rng(0).uniform(
        -1, 1, detail['shape']).astype(detail['dtype'])

  def __call__(self):
    self.interpreter.set_tensor(self.input, self.image)
    self.interpreter.invoke()
    return self.interpreter.get_tensor(self.output)

  def peak_bytes(self):
    return None


def worker_main(args) -> None:
  """One (framework, task) in this process: set up, warm up, then time
  `run N` requests from the parent on stdin; replies are JSON lines."""
  _pin(args.threads)
  framework, task = args.worker.split(':')
  start = time.perf_counter()
  if framework == 'ours':
    import jax
    if args.device == 'gpu' and jax.default_backend() != 'gpu':
      raise SystemExit('--device=gpu but JAX sees no GPU: pip install '
                       '"jax[cuda12]".')
    if task == 'train':
      work = OursTrain(args.batch, args.crop, args.dtype,
                       overrides=args.set)
    elif task == 'train_resnet50':
      work = OursTrain(args.batch, args.crop, args.dtype,
                       'configs/voc_resnet50.py', args.set)
    elif task == 'infer':
      work = OursInfer(args.batch, args.crop, args.dtype, overrides=args.set)
    else:
      work = OursInfer(1, 257, 'float32', 'mnv2_dm05_pascal_float_257',
                       args.set)
    device = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
    version = f'jax {jax.__version__}'
  elif framework == 'torch':
    import torch
    work = TorchWorker(task, args.batch, args.crop, args.dtype, args.threads,
                       args.device, args.torch_channels_last,
                       args.torch_compile or None)
    device = (torch.cuda.get_device_name() if args.device == 'gpu'
              else 'cpu')
    version = f'torch {torch.__version__}'
  else:
    import ai_edge_litert
    work = LiteRTWorker(args.tflite, args.threads)
    device = 'cpu (XNNPACK)'
    version = f'ai-edge-litert {getattr(ai_edge_litert, "__version__", "?")}'
  work()  # Compile / first call (ours: the CPU inference engine chosen).
  first = time.perf_counter() - start
  if hasattr(work, 'engine'):
    device += f', inference by {work.engine()}'
  for _ in range(args.warmup):
    work()
  if args.trace:
    # Before the timed calls, so that the profiler's cost stays out of them.
    path = pathlib.Path(args.trace)
    path.parent.mkdir(parents=True, exist_ok=True)
    if framework == 'ours':
      with jax.profiler.trace(str(path)):
        for _ in range(args.trace_steps):
          work()
    elif framework == 'torch':
      work.trace(path, args.trace_steps)
  _reply({'ready': True, 'setup_seconds': first, 'device': device,
          'version': version})
  for line in sys.stdin:
    command = line.split()
    if command[0] == 'quit':
      break
    times = []
    for _ in range(int(command[1])):
      t0 = time.perf_counter()
      work()
      times.append(time.perf_counter() - t0)
    _reply({'seconds': times, 'peak_bytes': work.peak_bytes()})


def _reply(message: dict) -> None:
  sys.stdout.write('@@' + json.dumps(message) + '\n')
  sys.stdout.flush()


# ------------------------------------------------------------------- parent


class Worker:
  """A worker process the parent talks to."""

  def __init__(self, name: str, argv: list[str], env: dict[str, str]):
    self.name = name
    self.is_ours = name.startswith('ours')
    self.process = subprocess.Popen(
        [sys.executable, __file__, *argv], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    self.info = self._read()

  def _read(self) -> dict:
    for line in self.process.stdout:
      if line.startswith('@@'):
        return json.loads(line[2:])
    raise RuntimeError(f'worker {self.name} exited with '
                       f'{self.process.wait()} (its log is above)')

  def run(self, steps: int) -> dict:
    self.process.stdin.write(f'run {steps}\n')
    self.process.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.stdin.write('quit\n')
      self.process.stdin.close()
      self.process.wait()


def _start(name: str, argv: list[str], env: dict[str, str],
           failed: set[str]) -> Worker | None:
  """The worker, or None (noted in `failed`) if it exits before ready."""
  try:
    worker = Worker(name, argv, env)
    # Compiling can take minutes on a GPU: say so as it happens.
    print(f'  ({name}: ready after {worker.info["setup_seconds"]:.1f} s)',
          flush=True)
    return worker
  except RuntimeError as error:
    print(f'{error}: left out of this comparison', flush=True)
    failed.add(name)
    return None


def _scenarios(args) -> list[tuple[str, int, int,
                                   list[tuple[str, list[str]]]]]:
  """(label, images per call, timed calls per round, [(name, worker
  argv)]) per comparison; ours first."""
  common = ['--threads', str(args.threads), '--device', args.device,
            '--crop', str(args.crop)]
  if args.torch_channels_last:
    common.append('--torch_channels_last')
  dtypes = args.dtypes.split(',')
  peer_flags = {'eager': [], 'compile': ['--torch_compile', 'default'],
                'max-autotune': ['--torch_compile', 'max-autotune']}
  peer_names = {'eager': 'torch eager', 'compile': 'torch.compile',
                'max-autotune': 'torch.compile[max-autotune]'}
  for peer in args.peers.split(','):
    if peer not in peer_flags:
      raise SystemExit(f'--peers: unknown peer {peer!r} '
                       f'({", ".join(peer_flags)})')

  def torch_peers(task, argv):
    return [(peer_names[p], ['--worker', f'torch:{task}', *argv,
                             *peer_flags[p]])
            for p in args.peers.split(',')]

  scenarios = []
  for task in args.only.split(','):
    if task in ('train', 'train_resnet50'):
      network = '' if task == 'train' else ' resnet50'
      for batch in args.batch_sizes.split(','):
        for dtype in dtypes:
          argv = common + ['--batch', batch, '--dtype', dtype]
          scenarios.append((f'train{network} b{batch} {args.crop} {dtype}',
                            int(batch), args.steps, [
              ('ours', ['--worker', f'ours:{task}', *argv]),
              *torch_peers(task, argv)]))
    elif task == 'infer':
      for dtype in dtypes:
        argv = common + ['--batch', str(args.infer_batch), '--dtype', dtype]
        scenarios.append((f'infer b{args.infer_batch} {args.crop} {dtype}',
                          args.infer_batch, args.infer_steps, [
            ('ours', ['--worker', 'ours:infer', *argv]),
            *torch_peers('infer', argv)]))
    elif task == 'tflite':
      if not pathlib.Path(args.tflite).exists():
        print(f'tflite: skipped, {args.tflite} not found (--tflite=PATH)')
        continue
      argv = common + ['--tflite', args.tflite]
      peers = [('ours', ['--worker', 'ours:tflite', *argv]),
               ('LiteRT', ['--worker', 'litert:tflite', *argv])]
      scenarios.append(('official float 257 dm0.5 OS8', 1, args.infer_steps,
                        peers))
    else:
      raise SystemExit(f'--only: unknown task {task!r} (train, infer, '
                       'tflite, train_resnet50)')
  return scenarios


def variant_spec(variant: str, argv: list[str], env: dict[str, str]
                  ) -> tuple[str, list[str], dict[str, str]]:
  """(worker name, argv, environment) of one --variants item: '--xla...'
  words go to XLA_FLAGS (replacing the caller's), 'NAME=VALUE' words with an
  upper-case NAME to the environment, other 'a.b=c' words to the config."""
  words = variant.split()
  flags = [w for w in words if w.startswith('--')]
  names = [w for w in words if re.match(r'[A-Z_][A-Z0-9_]*=', w)]
  sets = [w for w in words if w not in flags and w not in names]
  worker_env = dict(env, XLA_FLAGS=' '.join(flags),
                    **dict(w.split('=', 1) for w in names))
  argv = argv + [a for w in sets for a in ('--set', w)]
  return f'ours[{variant.strip() or "default"}]', argv, worker_env


def trace_path(root: str, label: str, name: str) -> pathlib.Path:
  """ROOT/<scenario>/<worker>, in letters, digits, '.', '_' and '-'."""
  clean = lambda text: re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')
  return pathlib.Path(root).resolve() / clean(label) / clean(name)


def _fmt(seconds: float) -> str:
  return f'{seconds * 1e3:.1f} ms' if seconds < 1 else f'{seconds:.2f} s'


def compare(args) -> list[dict]:
  env = dict(os.environ)
  if args.device == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
    env['CUDA_VISIBLE_DEVICES'] = ''
  else:
    # Two frameworks share the GPU: JAX takes memory as it needs it
    # instead of 75% up front.
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  from deeplab_jax import allocator  # pylint: disable=import-outside-toplevel
  malloc = allocator.preloaded() or 'glibc'
  print(f'machine: {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores; {args.threads} thread(s)/core(s) for '
        f'every framework; python {platform.python_version()}; malloc: '
        f'{malloc} (DEEPLAB_JAX_ALLOCATOR=system: glibc)')
  print(f'{args.rounds} rounds x {args.steps} timed train steps '
        f'({args.infer_steps} inference calls) each, alternating; median '
        '(min-max); ratio = ours / peer (< 1: ours faster)\n')
  if args.one_at_a_time:
    print('one at a time: each round starts, warms up, times and stops each '
          'worker in turn (no other worker resident while one is timed)\n')
  variants = args.variants or args.xla_variants
  variants = variants.split(';') if variants else None
  results = []
  for label, images, steps, peers in _scenarios(args):
    specs = []  # (name, argv, env) of each worker.
    for name, argv in peers:
      if name == 'ours' and variants:
        # One worker per variant, to measure a lever.
        specs += [variant_spec(v, argv, env) for v in variants]
        continue
      specs.append((name, argv, env))
    # Each worker profiles once: in --one_at_a_time, in its first round.
    trace_argv = {name: ['--trace', str(trace_path(args.trace, label, name)),
                         '--trace_steps', str(args.trace_steps)]
                  if args.trace else [] for name, _, _ in specs}
    times = {name: [] for name, _, _ in specs}
    peaks = {}
    failed = set()  # A variant that fails to start costs only itself.
    if args.one_at_a_time:
      infos = {}
      for round_index in range(args.rounds):
        for name, argv, worker_env in specs:
          if name in failed:
            continue
          if round_index == 0:
            argv = argv + trace_argv[name]
          w = _start(name, argv, worker_env, failed)
          if w is None:
            continue
          try:
            reply = w.run(steps)
          finally:
            w.close()
          times[name] += reply['seconds']
          peaks[name] = reply['peak_bytes']
          infos[name] = w
          # As it comes: a run cut short by a time limit still says it.
          print(f'  ({name}, round {round_index + 1}: median '
                f'{_fmt(statistics.median(reply["seconds"]))})', flush=True)
      workers = [infos[name] for name, _, _ in specs if name in infos]
    else:
      workers = []
      try:
        for name, argv, worker_env in specs:
          w = _start(name, argv + trace_argv[name], worker_env, failed)
          if w is not None:
            workers.append(w)
        for _ in range(args.rounds):
          for w in workers:
            reply = w.run(steps)
            times[w.name] += reply['seconds']
            peaks[w.name] = reply['peak_bytes']
      finally:
        for w in workers:
          w.close()
    if not any(w.is_ours for w in workers) or all(w.is_ours
                                                  for w in workers):
      print(f'{label}: skipped, no worker of ours or of the peer started\n')
      continue
    medians = {w.name: statistics.median(times[w.name]) for w in workers}
    print(f'{label}')
    for w in workers:
      t = times[w.name]
      line = (f'  {w.name:<14} {_fmt(medians[w.name]):>10} '
              f'({_fmt(min(t))}-{_fmt(max(t))})  '
              f'{images / medians[w.name]:.1f} img/s  first call '
              f'{w.info["setup_seconds"]:.1f} s  [{w.info["version"]}, '
              f'{w.info["device"]}]')
      if peaks.get(w.name):
        line += f'  peak {peaks[w.name] / 2**30:.2f} GiB'
      print(line)
    for ours in (w for w in workers if w.is_ours):
      for peer in (w for w in workers if not w.is_ours):
        # The machine's noise only ever adds time: the ratio of the fastest
        # calls says what each can do, the medians' what a user sees.
        print(f'  {ours.name}/{peer.name} = '
              f'{medians[ours.name] / medians[peer.name]:.2f} (fastest '
              f'calls: {min(times[ours.name]) / min(times[peer.name]):.2f})')
    results.append({'scenario': label, 'images_per_call': images,
                    'medians': medians, 'times': times,
                    'peak_bytes': peaks,
                    'info': {w.name: w.info for w in workers}})
    if args.json:  # After every scenario: a run cut short keeps the rest.
      pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    sys.stdout.flush()
  return results


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--device', choices=['cpu', 'gpu'], default='cpu')
  parser.add_argument('--only', default='train,infer,tflite')
  parser.add_argument('--batch_sizes', default=None,
                      help='train batches (default: 4,8 on CPU, 16 on GPU)')
  parser.add_argument('--infer_batch', type=int, default=None,
                      help='default: 1 on CPU, 16 on GPU')
  parser.add_argument('--dtypes', default=None,
                      help='default: float32 on CPU, float32,bfloat16 on GPU')
  parser.add_argument('--crop', type=int, default=513)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3,
                      help='timed train steps per worker and round')
  parser.add_argument('--infer_steps', type=int, default=20,
                      help='timed inference calls per worker and round')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--threads', type=int, default=None,
                      help='default: 2 on CPU, all cores on GPU')
  parser.add_argument('--tflite', default=str(OFFICIAL_FLOAT_257))
  parser.add_argument('--torch_channels_last', action='store_true')
  parser.add_argument('--peers', default='eager,compile',
                      help="PyTorch peers: 'eager', 'compile' (torch.compile "
                      "default mode), 'max-autotune'")
  parser.add_argument('--json', default=None, help='also write the times')
  parser.add_argument('--one_at_a_time', action='store_true',
                      help='start and stop each worker per round, so that '
                      'no other framework is resident while one is timed '
                      '(slower: every round compiles again)')
  parser.add_argument('--trace', default=None,
                      help='profile --trace_steps calls of each worker after '
                      'its warm-up, before the timed ones: ours with '
                      'jax.profiler into TRACE/<scenario>/ours (xprof or '
                      "TensorBoard's profile plugin reads it), PyTorch's "
                      'torch.profiler table into TRACE/<scenario>/torch*.txt')
  parser.add_argument('--trace_steps', type=int, default=3)
  parser.add_argument('--variants', default=None,
                      help="';'-separated variants of ours, one worker each: "
                      "XLA flags ('--xla_...') and config overrides "
                      "('model.depthwise_impl=shifted') and environment "
                      "variables ('NAME=VALUE') separated by spaces; "
                      "an empty one is the default, e.g. "
                      "';--xla_gpu_force_conv_nhwc=true;"
                      "model.depthwise_impl=shifted'")
  parser.add_argument('--xla_variants', default=None,
                      help='the same as --variants (its older name)')
  # Internal: a worker process.
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--batch', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)
  parser.add_argument('--set', action='append', default=[],
                      help=argparse.SUPPRESS)
  parser.add_argument('--torch_compile', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not args.worker:
    # As main.py runs (tcmalloc where the system has it), for every worker:
    # a tuned PyTorch user on a CPU preloads an allocator too.
    from deeplab_jax import allocator  # pylint: disable=import-outside-toplevel
    allocator.preload_tcmalloc()
  gpu = args.device == 'gpu'
  if args.threads is None:
    args.threads = len(os.sched_getaffinity(0)) if gpu else 2
  if args.worker:
    worker_main(args)
    return
  args.batch_sizes = args.batch_sizes or ('16' if gpu else '4,8')
  args.infer_batch = args.infer_batch or (16 if gpu else 1)
  args.dtypes = args.dtypes or ('float32,bfloat16' if gpu else 'float32')
  if gpu and args.only == 'train,infer,tflite':
    args.only += ',train_resnet50'
  compare(args)


if __name__ == '__main__':
  main()
