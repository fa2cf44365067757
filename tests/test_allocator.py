"""tcmalloc for the command line: when main.py re-executes itself, with
what, and that a preloaded run trains and says so."""

import os
import subprocess
import sys

import pytest

from deeplab_jax import allocator

LIB = 'libtcmalloc_minimal.so.4'


def test_the_relaunch_preloads_the_library_once_and_keeps_the_rest():
  env = {'PATH': '/bin', 'LD_PRELOAD': '/opt/other.so'}
  argv = ['/venv/bin/python', '-X', 'dev', 'main.py', '--config=x']
  new_env, new_argv = allocator.relaunch_command(env, argv, LIB)
  assert new_argv == argv  # Interpreter options and flags unchanged.
  assert new_env['LD_PRELOAD'] == f'{LIB}:/opt/other.so'
  assert new_env['PATH'] == '/bin'
  assert allocator.preloaded(new_env) == LIB
  # Once: after the re-execution, or where the loader refused the library.
  assert allocator.relaunch_command(new_env, argv, LIB) is None
  refused = dict(new_env, LD_PRELOAD='')
  assert allocator.relaunch_command(refused, argv, LIB) is None


@pytest.mark.parametrize('env,library', [
    ({}, None),  # Not on this system.
    ({'DEEPLAB_JAX_ALLOCATOR': 'system'}, LIB),  # Switched off.
    ({'LD_PRELOAD': '/usr/lib/libtcmalloc.so.4'}, LIB),  # Already there.
])
def test_no_relaunch(env, library):
  assert allocator.relaunch_command(env, ['python', 'main.py'],
                                    library) is None


def test_main_py_runs_under_tcmalloc_where_the_system_has_it(tmp_path):
  library = allocator.find_tcmalloc()
  if library is None:
    pytest.skip('no tcmalloc on this system (Debian: apt install '
                'libtcmalloc-minimal4)')
  probe = tmp_path / 'probe.py'
  # main.py's own first lines, then what the re-executed process sees.
  probe.write_text(
      'from deeplab_jax import allocator\n'
      'allocator.preload_tcmalloc()\n'
      'import os\n'
      'maps = open(f"/proc/{os.getpid()}/maps").read()\n'
      'print("tcmalloc" in maps, os.environ.get("LD_PRELOAD", "-"))\n')
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'DEEPLAB_JAX_ALLOCATOR_EXEC')}
  out = subprocess.run([sys.executable, str(probe)], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == ['True', library]
  env['DEEPLAB_JAX_ALLOCATOR'] = 'system'
  out = subprocess.run([sys.executable, str(probe)], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == ['False', '-']  # glibc's malloc.
