"""Command line: train, evaluate, predict, or summarise a DeepLab model.

    python main.py --config=configs/voc.py --workdir=runs/voc
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=eval
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=predict --images=DIR
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=export --export_format=tflite
    deeplab-jax --config=voc --mode=summary     # installed: a config by name

`--config` takes a config file's path or the name of a shipped config
(`voc`, `demo`, `voc_pretrained:mnv2_pascal_quant_513`, ...), which works
from any folder once the package is installed. Any config field can be
overridden, e.g. --config.train.batch_size=8.
"""

import logging as std_logging
import os
import sys

# TensorFlow (only the optional TF-checkpoint reader imports it) logs its CPU
# features.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# grain's worker processes leave their last prefetched batches in shared
# memory when training ends; multiprocessing's resource tracker frees them
# and warns about each. The warning is noise: nothing leaks past exit.
os.environ.setdefault(
    'PYTHONWARNINGS', 'ignore::UserWarning:multiprocessing.resource_tracker')

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import allocator
from deeplab_jax.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STOPPED,
                                DeepLabError)
# The export formats' names for --help (the registry is their one list).
from deeplab_jax.export import EXPORT_FORMATS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file; fields can be overridden with '
    '--config.<key>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'eval', 'predict', 'summary', 'prepare',
                   'export'],
                  'train (resumes from --workdir), eval, predict, summary '
                  '(parameter counts), prepare (build the dataset only), '
                  'export (a deployable file, --export_format).')
flags.DEFINE_string('export_format', 'tflite',
                    'export: the file format, one of '
                    f'{", ".join(EXPORT_FORMATS)} (README, "Deploy").')
flags.DEFINE_string('images', None,
                    'predict: a folder of images, one image file, or a glob '
                    "('photos/*.jpg', 'tiles/**/*.tif').")
flags.DEFINE_bool('recursive', False,
                  'predict: also segment the images in --images\' '
                  'subfolders, mirroring the tree in --output.')
flags.DEFINE_string('output', None,
                    'Where predict writes (default <workdir>/predictions), '
                    'where eval writes its results (default <workdir>/eval), '
                    'or the exported file.')
flags.DEFINE_bool('follow', False,
                  'eval: evaluate each new checkpoint while training runs.')
flags.DEFINE_string('coordinator_address', None,
                    'Several hosts: host:port of process 0 '
                    '(jax.distributed.initialize).')
flags.DEFINE_integer('num_processes', None, 'Several hosts: process count.')
flags.DEFINE_integer('process_id', None, 'Several hosts: this process.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() with cluster '
                  'auto-detection (SLURM, TPU pods, ...).')
flags.mark_flags_as_required(['config'])


def run(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that --help answers without TFDS and the builders.
  from deeplab_jax import cli, compilation_cache, distributed  # pylint: disable=import-outside-toplevel
  from deeplab_jax.weights import pretrained  # pylint: disable=import-outside-toplevel
  compilation_cache.enable(pretrained.cache_dir())
  if FLAGS.distributed or FLAGS.coordinator_address:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  result = cli.run(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
                   images=FLAGS.images, output=FLAGS.output,
                   follow=FLAGS.follow, recursive=FLAGS.recursive,
                   export_format=FLAGS.export_format)
  if FLAGS.mode == 'train' and result.get('stopped'):
    sys.exit(EXIT_STOPPED)  # Stopped early, resumable: not finished.


def _fail(message: str) -> None:
  logging.flush()
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_FAILED)


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """--config=NAME (a shipped config) -> --config=<its packaged path>."""
  from deeplab_jax.config import check_config_file  # pylint: disable=g-import-not-at-top
  out = list(argv)
  try:
    for i, arg in enumerate(out):
      if arg.startswith('--config=') and not arg.startswith('--config.'):
        out[i] = '--config=' + check_config_file(arg[len('--config='):])
      elif arg == '--config' and i + 1 < len(out):
        out[i + 1] = check_config_file(out[i + 1])
  except DeepLabError as e:
    _fail(str(e))
  return out


def _config_file_error(text: str) -> str | None:
  """One line for a config file whose get_config() raised (ml_collections
  wraps the traceback into its flag error): the file, its line and the
  exception."""
  if 'Error whilst parsing config file' not in text:
    return None
  lines = [l for l in text.splitlines() if l.strip()]
  frames = [l.strip() for l in lines if l.strip().startswith('File "')]
  where = frames[-1].split(', in ')[0] if frames else ''
  return (f'{lines[0].split(":", 1)[0].replace("flag ", "")}: the config '
          f'file raised {lines[-1].strip()} ({where}).')


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with one clear message for a bad --config.* flag.

  `--config.KEY=None` (any optional key) and list values such as
  `--config.model.head.dpc_branches='[{...}, ...]'` (a JSON or Python
  literal), which ml_collections' flag parser refuses, are applied after it.
  """
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  argv = _resolve_config_flag(argv)
  try:
    argv, literals = cli.split_literal_overrides(argv)
  except DeepLabError as e:
    _fail(str(e))
  # ml_collections finds the --config.* overrides in sys.argv itself.
  sys.argv = list(argv)
  try:
    remaining = FLAGS(argv)
  except flags.Error as e:
    _fail(_config_file_error(str(e)) or
          f'{e}\nPass --helpfull to see the flags.')
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises plain AttributeError/KeyError/TypeError for an
    # unknown or mistyped --config.<key>; name the key and the known ones.
    _fail(cli.diagnose_override(argv) or f'{type(e).__name__}: {e}')
  try:
    cli.apply_literal_overrides(FLAGS.config, literals)
  except DeepLabError as e:
    _fail(str(e))
  return remaining


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines of this project (progress reports included); the
  libraries' INFO chatter (orbax writes dozens of lines per checkpoint)
  stays out. Warnings and errors always pass."""

  _KEEP = ('deeplab_jax', 'main.py')

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or any(
        k in record.pathname for k in self._KEEP)


def main(argv) -> None:
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  try:
    run(argv)
  except DeepLabError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    # Ctrl-C outside the training loop (which saves and exits cleanly), or
    # a second Ctrl-C: stop without a traceback.
    logging.flush()
    print('Interrupted.', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def console_main() -> None:
  """The `deeplab-jax` command (and `python main.py`)."""
  allocator.preload_tcmalloc()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  console_main()
