"""SIGTERM (preemption) as a flag the training loop polls between steps.

A signal only sets the flag; the loop then saves a checkpoint and returns, so
no step is cut in half. In a multi-process run every process must stop at the
same step: `requested` agrees across processes (any one asked -> all stop).
"""

import signal

import numpy as np
from jax.experimental import multihost_utils
import jax


class Preemption:
  """Context manager that turns SIGTERM into `requested() == True`."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals, self._flag, self._previous = signals, False, {}

  def __enter__(self):
    for s in self.signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def requested(self) -> bool:
    """Whether any process got the signal (a collective when multi-process)."""
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.asarray(self._flag))
    return bool(np.any(flags))
