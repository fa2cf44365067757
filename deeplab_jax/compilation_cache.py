"""JAX's persistent compilation cache for the command line.

A restarted run (after a preemption or kill -9), the next eval of a
workdir, a second predict: each compiled its programs again (the demo
resuming for two steps: 9.5 s with the cache, 16-18 s without). Programs
that compile in under a second (jax's default threshold) are not cached,
so the folder stays small; it is capped at 2 GiB, least recently used
first out.
"""

from __future__ import annotations

import os

import jax

MAX_BYTES = 2 * 2**30
OFF = ('0', 'false', 'off', 'no')


def enable(cache_root: str) -> str | None:
  """Caches compiled programs in `<cache_root>/xla`; returns the folder.

  Leaves a folder the user chose (`JAX_COMPILATION_CACHE_DIR`, or
  `jax_compilation_cache_dir` set before) as it is, and does nothing with
  `DEEPLAB_JAX_COMPILATION_CACHE=0` (returns None).
  """
  if os.environ.get('DEEPLAB_JAX_COMPILATION_CACHE', '').lower() in OFF:
    return None
  chosen = jax.config.jax_compilation_cache_dir
  if chosen:
    return chosen
  folder = os.path.join(os.path.expanduser(cache_root), 'xla')
  jax.config.update('jax_compilation_cache_dir', folder)
  if jax.config.jax_compilation_cache_max_size == -1:  # Unlimited: cap it.
    jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  return folder
