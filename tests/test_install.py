"""The light install, as a new user and Colab get it: a fresh venv built
from pyproject alone (no requirements files, no TensorFlow), in which the
console command, training, evaluation, prediction with an official TFLite
model, TensorBoard files and the notebook all work.

Building the venv takes about two minutes, so these run in CI
(CI=true) or when DEEPLAB_JAX_INSTALL_TESTS=1; otherwise they skip.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
ENABLED = (os.environ.get('CI') == 'true' or
           os.environ.get('DEEPLAB_JAX_INSTALL_TESTS') == '1')

pytestmark = [
    pytest.mark.skipif(
        not ENABLED, reason='builds a fresh venv from pyproject (about 2 '
        'min): set DEEPLAB_JAX_INSTALL_TESTS=1 to run (CI does)'),
    # One pytest-xdist worker runs them all, so the venv is built once.
    pytest.mark.xdist_group('install_venv'),
]


def _run(args, **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (result.stdout[-3000:] +
                                  result.stderr[-3000:])
  return result


@pytest.fixture(scope='session')
def venv(tmp_path_factory):
  """A venv with `pip install "<repo>[notebook]"`: pyproject's ranges only
  (plus the notebook runner, which Colab has)."""
  root = tmp_path_factory.mktemp('colab_venv')
  _run([sys.executable, '-m', 'venv', str(root / 'venv')], timeout=300)
  bin_dir = root / 'venv' / 'bin'
  # --no-compile: byte-compiling every installed module took 40% of the
  # install (66 s -> 40 s here); Python compiles what the tests import.
  _run([str(bin_dir / 'pip'), 'install', '-q', '--no-compile',
        f'{REPO}[notebook]'], timeout=1200)
  return bin_dir


def _env(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  env['TFDS_DATA_DIR'] = str(tmp_path / 'tfds')
  return env


def test_no_tensorflow_and_the_command_works_from_any_folder(venv, tmp_path):
  probe = _run([str(venv / 'python'), '-c',
                'import importlib.util, deeplab_jax; '
                'print(importlib.util.find_spec("tensorflow") is None, '
                'deeplab_jax.__file__)'], cwd=tmp_path, env=_env(tmp_path))
  absent, location = probe.stdout.split()
  assert absent == 'True'
  assert 'site-packages' in location  # The installed package, not the repo.
  summary = _run([str(venv / 'deeplab-jax'), '--config=demo',
                  '--mode=summary'], cwd=tmp_path, env=_env(tmp_path),
                 timeout=300)
  rows = [line.split() for line in summary.stdout.splitlines()]
  assert ['total', '519,836', '16,768', '536,604'] in rows, summary.stdout


def test_train_eval_predict_without_tensorflow(venv, tmp_path):
  env = _env(tmp_path)
  workdir = tmp_path / 'run'
  command = [str(venv / 'deeplab-jax'), '--config=demo',
             f'--workdir={workdir}', '--config.train.num_steps=4',
             '--config.train.eval_every_steps=4',
             '--config.train.log_every_steps=2',
             '--config.train.batch_size=4', '--config.eval.max_images=4',
             '--config.eval.num_result_images=1',
             '--config.data.num_workers=0']
  output = _run(command, cwd=tmp_path, env=env, timeout=600).stdout
  assert 'Trained to step 4' in output
  metrics = json.loads((workdir / 'eval' / 'metrics.json').read_text())
  assert metrics['step'] == 4 and metrics['images'] == 4
  # TensorBoard files, written without TensorFlow, hold the logged loss.
  events = list(workdir.glob('events.out.tfevents.*'))
  assert events and any(b'train/cross_entropy' in e.read_bytes()
                        for e in events)
  if not SHARED.exists():
    pytest.skip('../shared (official TFLite model) is absent')
  predictions = tmp_path / 'predictions'
  _run([str(venv / 'deeplab-jax'),
        '--config=voc_pretrained:mnv2_dm05_pascal_float_257', '--mode=predict',
        f'--config.train.init_from={SHARED}/models/deeplabv3_257_mv_gpu.tflite',
        f'--images={SHARED}/models/testdata', f'--output={predictions}'],
       cwd=tmp_path, env=env, timeout=600)
  assert (predictions / 'bird_mask.png').exists()
  summary = json.loads((predictions / 'predictions.json').read_text())
  assert 'bird' in summary['class_fractions']['bird.png']


def test_notebook_executes_in_the_colab_install(venv, tmp_path):
  if not SHARED.exists():
    pytest.skip('../shared (the notebook reads it offline) is absent')
  script = f'''
import nbformat, time
from nbclient import NotebookClient
path = {str(REPO / 'notebooks' / 'deeplab_jax.ipynb')!r}
notebook = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(notebook, timeout=600, kernel_name='python3',
               resources={{'metadata': {{'path': {str(REPO / 'notebooks')!r}}}}}
               ).execute()
pictures = [c for c in notebook.cells if 'picture' in c.metadata.get('tags', [])]
drawn = sum(any('image/png' in o.get('data', {{}}) for o in c.outputs)
            for c in pictures)
print('pictures', len(pictures), 'drawn', drawn,
      'seconds', round(time.perf_counter() - start))
'''
  env = dict(_env(tmp_path), DEEPLAB_JAX_NOTEBOOK_SMOKE='1')
  output = _run([str(venv / 'python'), '-c', script], cwd=tmp_path, env=env,
                timeout=900).stdout
  words = output.split()
  pictures = int(words[words.index('pictures') + 1])
  drawn = int(words[words.index('drawn') + 1])
  assert pictures >= 6 and drawn == pictures, output
