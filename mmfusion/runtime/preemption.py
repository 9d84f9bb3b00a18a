"""SIGTERM (preemption) and SIGINT (Ctrl-C) as a flag the training loop polls
after every step.

A signal only sets the flag; the loop then saves a checkpoint and returns, so
no step is cut in half and the save starts within one step of the signal. A
second Ctrl-C interrupts at once (the previous handler is back after the
first). In a multi-process run every process must stop at the same step:
`requested` agrees across processes (any one asked -> all stop); that is one
small collective per step.
"""

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
  """Context manager that turns SIGTERM / SIGINT into `requested() == True`."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals, self._previous = signals, {}
    self.signal_name = None  # 'SIGTERM' once one arrived

  def __enter__(self):
    for s in self.signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    self.signal_name = self.signal_name or signal.Signals(signum).name
    signal.signal(signum, self._previous[signum])  # a second one is not held

  def requested(self) -> bool:
    """Whether any process got a signal (a collective when multi-process)."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    flags = multihost_utils.process_allgather(
        np.asarray(self.signal_name is not None))
    if np.any(flags) and self.signal_name is None:
      self.signal_name = 'a signal to another process'
    return bool(np.any(flags))
