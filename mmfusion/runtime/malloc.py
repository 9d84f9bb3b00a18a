"""glibc heap settings that keep freed memory for reuse (Linux only)."""

import ctypes
import importlib.util
import os
import sys

# Importable: JAX will start on that accelerator rather than on the CPU.
ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu')


def _installed(module: str, find_spec) -> bool:
  try:
    return find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def runs_on_cpu(environ=None, find_spec=importlib.util.find_spec) -> bool:
  """Whether JAX will run on the CPU, decided without starting its backend.

  JAX_PLATFORMS, if set, decides by its first entry; otherwise the CPU is
  assumed unless a GPU or TPU plugin is installed (one installed on a machine
  without the device only costs the tuning, not correctness).
  """
  environ = os.environ if environ is None else environ
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not any(_installed(m, find_spec) for m in ACCELERATOR_PLUGINS)


def tune_malloc() -> bool:
  """Keeps freed memory in glibc's heap instead of returning it to the OS.

  XLA:CPU allocates its temporaries afresh every step; above 32 MiB glibc
  serves them with mmap, so every step page-faults them in again (a 100 MB
  activation costs ~70 ms of faults on a 2-core VM). One arena, no mmap and no
  trimming make later steps reuse warm pages. Call before JAX starts its
  threads. Returns False where there is no glibc (macOS, Windows).
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return False
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # malloc.h
  return bool(libc.mallopt(m_arena_max, 1) and libc.mallopt(m_mmap_max, 0)
              and libc.mallopt(m_trim_threshold, 2**31 - 1))
