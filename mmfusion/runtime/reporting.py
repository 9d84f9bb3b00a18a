"""Where metrics go: a progress line on stdout, metrics.jsonl, TensorBoard.

Only process 0 writes; the other processes of a multi-host run stay quiet.
"""

import datetime
import json
import os
import sys
import time

import jax

from mmfusion.runtime import files


def _import_tensorboardx():
  """tensorboardX's writers, without the PyTorch it imports when installed
  (only to accept torch tensors, 2 s of start-up): scalars here are floats."""
  hidden = 'torch' not in sys.modules
  if hidden:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import event_file_writer, summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  finally:
    if hidden:
      del sys.modules['torch']
  return event_file_writer, summary, event_pb2


event_file_writer, summary, event_pb2 = _import_tensorboardx()


class MetricWriter:
  """Appends `{step, split, **metrics}` to metrics.jsonl and TensorBoard.

  Both are written in the calling thread, each record as one whole line, so
  a failed write (a full disk) raises here, as one sentence, and leaves no
  half line. A run resumed from step `resume_step` first drops what a
  previous attempt logged after that step (the resumed run logs it again,
  with the same values) and a half-written last line, and tells TensorBoard
  to hide its events from `resume_step + 1` on.
  """

  def __init__(self, workdir: str, resume_step: int | None = None,
               final_step: int | None = None):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self.path = os.path.join(workdir, 'metrics.jsonl')
    with files.writes(self.path):
      if resume_step is not None:
        _drop_after(self.path, resume_step, final_step)
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o644)
      tb_dir = os.path.join(workdir, 'tensorboard')
      os.makedirs(tb_dir, exist_ok=True)
      self._tb = event_file_writer.EventsWriter(os.path.join(tb_dir, 'events'))
      if resume_step is not None:
        self._tb.write_event(event_pb2.Event(
            step=resume_step + 1, wall_time=time.time(),
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
      self._tb.flush()

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
    line = (json.dumps(record) + '\n').encode()
    with files.writes(self.path):
      size = os.fstat(self._fd).st_size
      try:
        done = 0
        while done < len(line):  # a short write: the rest says why
          done += os.write(self._fd, line[done:])
      except OSError:
        os.ftruncate(self._fd, size)  # never a half line
        raise
      for k, v in metrics.items():
        self._tb.write_event(event_pb2.Event(
            step=int(step), wall_time=time.time(),
            summary=summary.scalar(f'{tag}/{k}', float(v))))
      self._tb.flush()

  def close(self):
    if self.active:
      os.close(self._fd)
      with files.writes(self.path):
        self._tb.close()


def _kept(record: dict, resume_step: int, final_step: int | None) -> bool:
  """Whether a logged record survives a resume from `resume_step`: what came
  after it is logged again, and so is the final evaluation of a run whose
  last checkpoint is its final step."""
  if record['step'] > resume_step:
    return False
  return not (record['step'] == resume_step == final_step
              and record['split'] != 'train')


def _drop_after(path: str, resume_step: int, final_step: int | None):
  """Rewrites metrics.jsonl (atomically) without what `_kept` drops and
  without a half-written last line; says what went."""
  if not os.path.exists(path):
    return
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  whole, tail = lines[:-1], lines[-1]  # tail: b'' unless cut mid-line
  records = []
  for line in whole:
    try:
      records.append(json.loads(line))
    except ValueError:
      tail = tail or line
  kept = [r for r in records if _kept(r, resume_step, final_step)]
  if len(kept) == len(records) and not tail:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(tmp, path)  # atomic: the old file or the new one
  dropped = len(records) - len(kept)
  said = [f'{dropped} records after step {resume_step} (logged again now)'
          ] if dropped else []
  said += ['a half-written line'] if tail else []
  print(f'metrics.jsonl: dropped {" and ".join(said)}.', flush=True)


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
