"""Command line: `python main.py --config=configs/voc.py --workdir=runs/voc`.

The same as the installed `deeplab-jax` command; see deeplab_jax/main.py for
the flags.
"""

from deeplab_jax.main import console_main

if __name__ == '__main__':
  console_main()
