"""Where metrics go: a progress line on stdout, metrics.jsonl, TensorBoard.

Only process 0 writes; the other processes of a multi-host run stay quiet.
"""

import datetime
import json
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends `{step, split, **metrics}` to metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if self.active:
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, metrics: dict,
            member: int | None = None):
    """One event; `member` is the index of a vmapped seed / value, if any."""
    if not self.active:
      return
    record = {'step': int(step), 'split': split}
    tag = split
    if member is not None:
      record['member'], tag = member, f'{split}/member{member}'
    record.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(f'{tag}/{k}', float(v), int(step))
    self._tb.flush()

  def close(self):
    if self.active:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """`[####....] step/total loss .. | N ex/s | ETA h:mm:ss` lines on stdout."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int,
               width: int = 24, stream=sys.stdout):
    self.total, self.batch_size, self.width = total_steps, batch_size, width
    self.stream = stream
    self._t0, self._step0 = time.perf_counter(), first_step
    self.active = jax.process_index() == 0

  def update(self, step: int, metrics: dict):
    """Prints one line; throughput counts steps since the last `restart`."""
    if not self.active:
      return
    elapsed = time.perf_counter() - self._t0
    done = step - self._step0
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.total - step) / rate if rate else 0.0
    filled = int(self.width * step / max(self.total, 1))
    bar = '#' * filled + '.' * (self.width - filled)
    shown = ' '.join(f'{k} {v:.4f}' for k, v in metrics.items())
    print(f'[{bar}] {step}/{self.total} {shown} | '
          f'{rate * self.batch_size:,.0f} ex/s | '
          f'ETA {datetime.timedelta(seconds=round(eta))}',
          file=self.stream, flush=True)

  def restart(self, step: int):
    """Excludes time not spent training (eval, checkpoints) from the rate."""
    self._t0, self._step0 = time.perf_counter(), step


def table(results: dict, keys=('accuracy', 'macro_f1', 'loss', 'examples')) -> str:
  """A small Markdown table: one row per split of `results`."""
  lines = ['| split | ' + ' | '.join(keys) + ' |',
           '|---' * (len(keys) + 1) + '|']
  for split, metrics in results.items():
    cells = [f'{metrics[k]:.4f}' if isinstance(metrics[k], float)
             else str(metrics[k]) for k in keys]
    lines.append(f'| {split} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
