"""Test set-up: 8 fake CPU devices, made before JAX starts its backend, and
one persistent compilation cache for the session."""

import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           # Tests check behaviour, not speed: compile faster
                           # (XLA's older CPU emitters: about 2x on these
                           # small programs).
                           ' --xla_backend_optimization_level=0'
                           ' --xla_cpu_use_fusion_emitters=false').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests compile the same small programs (a tiny config's train step, an
# encoder's forward): the first compile of each is kept on disk for the rest
# of the session, shared with the xdist workers and the child processes
# (which inherit the environment). The process that starts the session makes
# the folder and removes it at the end; a cache set from outside is left be.
_OWN_CACHE = None
if ('PYTEST_XDIST_WORKER' not in os.environ and
    'JAX_COMPILATION_CACHE_DIR' not in os.environ):
  _OWN_CACHE = tempfile.mkdtemp(prefix='mmfusion-tests-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

assert jax.device_count() == 8, 'conftest must run before JAX starts'


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the whole session: each tiny dataset builds once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))
