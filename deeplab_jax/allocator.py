"""tcmalloc for the command line, where the system has it.

An XLA:CPU step allocates and frees its large temporaries on every call;
glibc hands each back to the kernel and the next step faults its pages in
again, while tcmalloc keeps them (configs/voc.py, batch 8 at 513 on two
cores: 7.4 s a step with glibc, 4.9 s with tcmalloc). `python main.py`
re-executes itself once with the library in LD_PRELOAD, before JAX loads;
`DEEPLAB_JAX_ALLOCATOR=system` keeps glibc's malloc. Only the standard
library is imported here.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping, Sequence

# The Debian/Ubuntu package libtcmalloc-minimal4 (gperftools), then the
# full library.
LIBRARIES = ('tcmalloc_minimal', 'tcmalloc')
SWITCH = 'DEEPLAB_JAX_ALLOCATOR'  # 'tcmalloc' (default) or 'system'.
_DONE = 'DEEPLAB_JAX_ALLOCATOR_EXEC'  # Set once: never re-execute twice.


def find_tcmalloc() -> str | None:
  """The tcmalloc shared library's name as the loader finds it, or None."""
  if not sys.platform.startswith('linux'):
    return None
  for name in LIBRARIES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def preloaded(environ: Mapping[str, str] | None = None) -> str | None:
  """The tcmalloc library in LD_PRELOAD, or None."""
  environ = os.environ if environ is None else environ
  for path in environ.get('LD_PRELOAD', '').replace(':', ' ').split():
    if 'tcmalloc' in os.path.basename(path):
      return path
  return None


def relaunch_command(environ: Mapping[str, str], argv: Sequence[str],
                     library: str | None
                     ) -> tuple[dict[str, str], list[str]] | None:
  """(environment, argv) to re-execute with `library` preloaded, or None
  when there is nothing to do: no library, switched off, already preloaded
  or already re-executed (a library the loader refused)."""
  if (library is None or environ.get(SWITCH, 'tcmalloc') != 'tcmalloc' or
      preloaded(environ) or environ.get(_DONE)):
    return None
  env = dict(environ)
  env['LD_PRELOAD'] = ':'.join(
      p for p in (library, environ.get('LD_PRELOAD', '')) if p)
  env[_DONE] = '1'
  return env, list(argv)


def preload_tcmalloc() -> None:
  """Re-executes this process (same PID, arguments and interpreter options)
  with tcmalloc preloaded, when the system has it; otherwise returns."""
  command = relaunch_command(os.environ, sys.orig_argv, find_tcmalloc())
  if command is None:
    return
  env, argv = command
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)
