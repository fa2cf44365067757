"""Command line: `python main.py --config=configs/voc.py --workdir=runs/voc`.

The same as the installed `deeplab-jax` command; see deeplab_jax/main.py for
the flags.
"""

if __name__ == '__main__':
  # Before anything imports JAX: re-executes with tcmalloc where the
  # system has it (deeplab_jax/allocator.py).
  from deeplab_jax import allocator
  allocator.preload_tcmalloc()
  from deeplab_jax.main import console_main
  console_main()
