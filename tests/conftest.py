"""Test set-up: 8 fake CPU devices, made before JAX starts its backend."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           # Tests check behaviour, not speed: compile faster
                           # (XLA's older CPU emitters: about 2x on these
                           # small programs).
                           ' --xla_backend_optimization_level=0'
                           ' --xla_cpu_use_fusion_emitters=false').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

assert jax.device_count() == 8, 'conftest must run before JAX starts'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the whole session: each tiny dataset builds once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))
