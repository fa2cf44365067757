"""Command line: train, evaluate, predict, or summarise a DeepLab model.

    python main.py --config=configs/voc.py --workdir=runs/voc
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=eval
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=predict --images=DIR
    python main.py --config=configs/voc.py --mode=summary

Any config field can be overridden, e.g. --config.train.batch_size=8.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax.errors import DeepLabError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file; fields can be overridden with '
    '--config.<key>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary'],
                  'What to do.')
flags.DEFINE_string('images', None, 'Folder of images to segment (predict).')
flags.mark_flags_as_required(['config'])


def run(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that --help answers without loading JAX.
  from deeplab_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run(FLAGS.config, mode=FLAGS.mode, workdir=FLAGS.workdir,
          images=FLAGS.images)


def _fail(message: str) -> None:
  logging.flush()
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with one clear message for a bad --config.* flag."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}\nPass --helpfull to see the flags.')
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises plain AttributeError/KeyError/TypeError for an
    # unknown or mistyped --config.<key>; name the key and the known ones.
    from deeplab_jax.config import diagnose_override  # pylint: disable=g-import-not-at-top
    _fail(diagnose_override(argv) or f'{type(e).__name__}: {e}')


def main(argv) -> None:
  # JAX reports each accelerator it does not find at INFO level.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  try:
    run(argv)
  except DeepLabError as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
