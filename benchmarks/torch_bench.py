"""Times the PyTorch ports (`torch_models`) in eager mode, in a child process.

One step does what `mmfusion.train.train_step` does: forward, softmax
cross-entropy, backward, accuracy, the global and per-part gradient norms,
optional clipping by global norm, then AdamW (`fused=True`, the fastest of
PyTorch's three CPU implementations here: 0.87 ms against 1.13 for
`foreach` on the seed model) at the warmup-cosine learning rate. Denormals are
flushed to zero, as XLA does.

The models run in a child process (`Worker`), so that PyTorch's OpenMP
threads and XLA's thread pool never share a process; the child gets the same
glibc heap setting as the parent (`malloc.tune_malloc`, which helps both).
The parent alternates between the two, so both see the same machine load.
"""

import math
import os
import pickle
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warmup_cosine(step: int, opt: dict, total_steps: int) -> float:
  """optax.warmup_cosine_decay_schedule as train.make_optimizer sets it up."""
  peak, warmup = opt['learning_rate'], opt['warmup_steps']
  if step < warmup:
    return peak * step / warmup
  decay = max(total_steps, warmup + 1) - warmup
  frac = min(step - warmup, decay) / decay
  end = peak * opt['final_lr_fraction']
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


class Trainer:
  """One model, its AdamW state and a fixed batch; `step()` is one update."""

  def __init__(self, config: dict, batch: dict, num_classes: int):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.manual_seed(config['seed'])
    torch.set_flush_denormal(True)
    modalities = sorted(config['model']['encoders'])
    shapes = {m: batch[m].shape[1:] for m in modalities}
    self.model = torch_models.build(config['model'], shapes, num_classes)
    self.model.train()
    self.param_counts = torch_models.param_counts(self.model)
    self.batch = {k: torch.from_numpy(np.asarray(
        v, np.int64 if v.dtype == np.int32 else v.dtype)) for k, v in batch.items()}
    self.opt_config, self.total_steps = config['optimizer'], config['total_steps']
    o = self.opt_config
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.0,
                                 betas=(o['b1'], o['b2']), eps=1e-8,
                                 weight_decay=o['weight_decay'], fused=True)
    self.parts = [(n, list(c.parameters())) for n, c in self.model.named_children()]
    self.parts = [(n, ps) for n, ps in self.parts if ps]
    self.count, self.metrics = 0, {}

  def step(self):
    torch = self.torch
    lr = warmup_cosine(self.count, self.opt_config, self.total_steps)
    for group in self.opt.param_groups:
      group['lr'] = lr
    self.opt.zero_grad(set_to_none=True)
    label = self.batch['label']
    logits = self.model(self.batch)
    loss = torch.nn.functional.cross_entropy(logits, label)
    loss.backward()
    with torch.no_grad():
      accuracy = (logits.argmax(-1) == label).float().mean()
      norms = {n: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
          [p.grad for p in ps]))) for n, ps in self.parts}
      total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
      clip = self.opt_config.get('grad_clip_norm') or 0.0
      if clip:
        torch._foreach_mul_([p.grad for _, ps in self.parts for p in ps],
                            torch.clamp(clip / (total + 1e-6), max=1.0))
    self.opt.step()
    self.count += 1
    self.metrics = {'loss': loss.detach(), 'accuracy': accuracy,
                    'grad_norm': total, **norms}

  def run(self, n: int) -> list[float]:
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      self.step()
      times.append(time.perf_counter() - t0)
    return times


class Server:
  """Handles ('build', key, config, batch, C), ('run', key, n), ('info',)."""

  def __init__(self):
    self.trainers = {}

  def handle(self, msg):
    if msg[0] == 'info':
      import torch  # pylint: disable=g-import-not-at-top
      return {'version': torch.__version__, 'threads': torch.get_num_threads()}
    if msg[0] == 'build':
      _, key, config, batch, num_classes = msg
      trainer = Trainer(config, batch, num_classes)
      self.trainers[key] = trainer
      return {'param_counts': trainer.param_counts}
    if msg[0] == 'run':
      _, key, n = msg
      trainer = self.trainers[key]
      times = trainer.run(n)
      return {'times': times, 'loss': float(trainer.metrics['loss'])}
    if msg[0] == 'drop':
      self.trainers.pop(msg[1], None)
      return {}
    raise ValueError(f'unknown request {msg[0]!r}')


class Worker:
  """`call(msg)` runs `Server.handle(msg)` in a child process (or in this
  one with `in_process=True`); a NotImplementedError there is raised here."""

  def __init__(self, in_process: bool = False, tune_malloc: bool = True):
    self.server = Server() if in_process else None
    if in_process:
      return
    parent_read, child_write = os.pipe()
    child_read, parent_write = os.pipe()
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.torch_bench', str(child_read),
         str(child_write), 'tune' if tune_malloc else 'default'],
        pass_fds=(child_read, child_write), cwd=ROOT)
    os.close(child_read)
    os.close(child_write)
    self.out = os.fdopen(parent_write, 'wb')
    self.inp = os.fdopen(parent_read, 'rb')

  def call(self, *msg):
    if self.server is not None:
      return self.server.handle(msg)
    pickle.dump(msg, self.out)
    self.out.flush()
    try:
      ok, value = pickle.load(self.inp)
    except EOFError:
      raise RuntimeError(f'the PyTorch worker died (exit status '
                         f'{self.proc.wait()}); see its stderr above.') from None
    if not ok:
      kind, text = value
      raise (NotImplementedError if kind == 'NotImplementedError'
             else RuntimeError)(text)
    return value

  def close(self):
    if self.server is None:
      self.out.close()
      self.proc.wait(timeout=60)


def serve(read_fd: int, write_fd: int):
  server = Server()
  with os.fdopen(read_fd, 'rb') as inp, os.fdopen(write_fd, 'wb') as out:
    while True:
      try:
        msg = pickle.load(inp)
      except EOFError:
        return
      try:
        reply = (True, server.handle(msg))
      except Exception as e:  # pylint: disable=broad-except
        reply = (False, (type(e).__name__, f'{type(e).__name__}: {e}'))
      pickle.dump(reply, out)
      out.flush()


if __name__ == '__main__':
  if sys.argv[3] == 'tune':
    from mmfusion.runtime import malloc  # pylint: disable=g-import-not-at-top
    malloc.tune_malloc()
  serve(int(sys.argv[1]), int(sys.argv[2]))
