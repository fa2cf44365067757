"""One trainer per workdir: processes racing for the lock (bare ones: the
lock is 60 lines of flock, and tests/test_train.py checks what a second
trainer prints): exactly one wins each race, the others are told who holds
it, and the lock goes with its holder however it ends."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from deeplab_jax.errors import CheckpointError
from deeplab_jax.workdir_lock import WorkdirLock

# Waits for a start time, takes the lock, holds it a moment; exit 0 when it
# held it, 3 when told that another holds it.
RACER = textwrap.dedent('''
    import sys, time
    from deeplab_jax.errors import CheckpointError
    from deeplab_jax.workdir_lock import WorkdirLock
    workdir, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    try:
      with WorkdirLock(workdir):
        time.sleep(0.5)
    except CheckpointError as e:
      print(e)
      sys.exit(3)
''')


def _racers(workdir, count, start):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  return [subprocess.Popen([sys.executable, '-c', RACER, str(workdir),
                            str(start)], stdout=subprocess.PIPE, text=True,
                           env=env) for _ in range(count)]


@pytest.mark.parametrize('trial', range(4))
def test_racers_started_together_one_holds_the_others_are_told(tmp_path,
                                                               trial):
  del trial
  racers = _racers(tmp_path, 6, time.time() + 1.0)
  outputs = [r.communicate(timeout=60)[0] for r in racers]
  codes = sorted(r.returncode for r in racers)
  assert codes == [0, 3, 3, 3, 3, 3], (codes, outputs)
  for output in outputs:
    if output:
      assert 'is being trained by another run (host ' in output, output
      assert ', pid ' in output and 'since 20' in output, output


def test_the_lock_goes_with_a_killed_holder(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\n'
       'from deeplab_jax.workdir_lock import WorkdirLock\n'
       'with WorkdirLock(sys.argv[1]):\n  print("held", flush=True)\n'
       '  time.sleep(60)\n', str(tmp_path)],
      stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=os.getcwd()))
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(CheckpointError, match=f'pid {holder.pid}'):
    with WorkdirLock(tmp_path):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  with WorkdirLock(tmp_path):  # Free again, the file still there.
    assert (tmp_path / 'train.lock').exists()
