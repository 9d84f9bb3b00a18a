r"""Decoding throughput: mmfusion's jitted decode against PyTorch eager.

  python -m benchmarks.decode_speed [--batch_size=64] [--max_length=32] \
      [--features=64] [--num_layers=2] [--vocab_size=256] [--beam_size=4] \
      [--repeats=5] [--rounds=2] [--torch=true] [--torch_threads=0]

A `mmfusion.nn.decoder.Decoder` (cross-attention to a random memory of
`--memory_tokens`, BOS prompts) decodes a batch with `decoding.greedy` and
`decoding.beam_search`, each jitted whole (one `lax.while_loop` over
tokens, a KV cache); its compile time is lower + compile, with no
persistent cache. The same decoder in PyTorch eager
(benchmarks/torch_decoder.py, the flax weights copied in, a KV cache, one
Python step per token) decodes greedily in a child process, so that its
OpenMP threads and XLA's never share a process; the two alternate in
`--rounds` blocks of `--repeats` timed calls, and the greedy tokens of the
two must be equal. Tokens/s counts the tokens each decode writes after the
prompt, EOS included (for beam search, those of the best beam). Prints a
Markdown table and the command for benchmarks/RESULTS.md.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_BATCH = flags.DEFINE_integer('batch_size', 64, 'Sequences decoded at once.')
_MAX_LENGTH = flags.DEFINE_integer('max_length', 32,
                                   'Tokens per sequence, BOS included.')
_MEMORY = flags.DEFINE_integer('memory_tokens', 16, 'Memory tokens [M].')
_VOCAB = flags.DEFINE_integer('vocab_size', 256, 'Vocabulary size.')
_FEATURES = flags.DEFINE_integer('features', 64, 'Decoder width D.')
_LAYERS = flags.DEFINE_integer('num_layers', 2, 'Decoder blocks.')
_HEADS = flags.DEFINE_integer('num_heads', 4, 'Attention heads.')
_BEAM = flags.DEFINE_integer('beam_size', 4, 'Beams of the beam search row.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per block.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Blocks per side, alternating.')
_TORCH = flags.DEFINE_bool('torch', True, 'Time the PyTorch eager loop too.')
_TORCH_THREADS = flags.DEFINE_integer(
    'torch_threads', 0, 'PyTorch intra-op threads (0: its default, one per '
    'core). On a loaded machine 1 can be faster: its OpenMP threads wait on '
    'descheduled peers.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOS, EOS = 1, 2


def _sizes() -> dict:
  return {'vocab_size': _VOCAB.value, 'features': _FEATURES.value,
          'num_layers': _LAYERS.value, 'num_heads': _HEADS.value,
          'mlp_dim': 4 * _FEATURES.value, 'max_positions': _MAX_LENGTH.value,
          'memory_dim': _FEATURES.value, 'max_length': _MAX_LENGTH.value,
          'eos_id': EOS, 'torch_threads': _TORCH_THREADS.value}


def _jax_side(sizes: dict):
  """(decoder, its decode functions compiled, (params, batch), compile
  seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from mmfusion.nn import decoder as decoder_lib
  from mmfusion.nn import decoding

  dec = decoder_lib.Decoder(
      sizes['vocab_size'], features=sizes['features'],
      num_layers=sizes['num_layers'], num_heads=sizes['num_heads'],
      mlp_dim=sizes['mlp_dim'], max_positions=sizes['max_positions'])
  rng = np.random.default_rng(0)
  b, m, length = _BATCH.value, _MEMORY.value, sizes['max_length']
  memory = rng.standard_normal((b, m, sizes['memory_dim'])).astype(np.float32)
  mask = np.ones((b, m), bool)
  prompt = np.full((b, 1), BOS, np.int32)
  variables = jax.jit(dec.init)(jax.random.PRNGKey(0), prompt, memory, mask)

  def greedy(v, memory, mask, prompt):
    step, cache = decoder_lib.stepper(dec, v, memory, mask, max_length=length)
    return decoding.greedy(step, cache, prompt, max_length=length, eos_id=EOS)

  def beam(v, memory, mask, prompt):
    step, cache = decoder_lib.stepper(dec, v, memory, mask, max_length=length)
    return decoding.beam_search(step, cache, prompt, beam_size=_BEAM.value,
                                max_length=length, eos_id=EOS)[0][:, 0]

  args = (variables, memory, mask, prompt)
  fns, compile_s = {}, {}
  for name, fn in (('greedy', greedy), (f'beam {_BEAM.value}', beam)):
    t0 = time.perf_counter()
    fns[name] = jax.jit(fn).lower(*args).compile()
    compile_s[name] = time.perf_counter() - t0
  return dec, fns, args, compile_s


def _time_jax(fn, args, repeats: int) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def _generated(tokens) -> int:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return int(np.sum(np.asarray(tokens)[:, 1:] != 0))


class _TorchChild:
  """The PyTorch greedy loop in a child process (benchmarks/torch_decoder)."""

  def __init__(self, sizes: dict, args):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    variables, memory, mask, prompt = args
    self.dir = tempfile.mkdtemp(prefix='decode_speed-')
    flat = {'params/' + '/'.join(k.key for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(
                variables['params'])[0]}
    np.savez(os.path.join(self.dir, 'arrays.npz'), memory=memory, mask=mask,
             prompt=prompt, **flat)
    with open(os.path.join(self.dir, 'sizes.json'), 'w') as f:
      json.dump(sizes, f)
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.torch_decoder',
         f'--inputs={self.dir}'], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    self.first = json.loads(self.proc.stdout.readline())

  def time(self, repeats: int) -> list:
    self.proc.stdin.write(f'time {repeats}\n')
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())['seconds']

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    shutil.rmtree(self.dir, ignore_errors=True)


def _median(xs):
  return sorted(xs)[len(xs) // 2]


def _check_against_torch(dec, args, greedy_tokens, child) -> tuple[bool, str]:
  """The report line on the PyTorch port: the same greedy tokens, and how
  close its first-step logits are (flax teacher-forced on BOS)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  variables, memory, mask, prompt = args
  first = np.asarray(jax.jit(dec.apply)(variables, prompt, memory, mask))
  diff = np.max(np.abs(first[:, 0, 1:] - np.asarray(
      child.first['first_logits'])[:, 1:]))
  same = np.array_equal(np.asarray(child.first['tokens']), greedy_tokens)
  return same, (
      f'- PyTorch {child.first["version"]} eager, {child.first["threads"]} '
      f'threads, in a child process; with the flax weights copied in, the '
      f'same greedy tokens: {"yes" if same else "NO"} (first-step logits '
      f'within {diff:.1e})')


def _table(times: dict, compile_s: dict, outputs: dict, torch_name: str):
  rows = []
  for name, ts in times.items():
    sec = _median(ts)
    rate = _generated(outputs.get(name, outputs['greedy'])) / sec
    rows.append((name, compile_s.get(name), sec, rate))
  torch_rate = dict((r[0], r[3]) for r in rows).get(torch_name)
  lines = ['| decode | compile s | ms per batch | tokens/s | vs PyTorch '
           'eager greedy |', '|---|---|---|---|---|']
  for name, comp, sec, rate in rows:
    ratio = f'**{rate / torch_rate:.2f}x**' if torch_rate else ''
    comp = f'{comp:.2f}' if comp is not None else ''
    label = name if name == torch_name else f'mmfusion {name} (jit)'
    lines.append(f'| {label} | {comp} | {1000 * sec:.1f} | {rate:,.0f} | '
                 f'{ratio} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  load_before = os.getloadavg()[0]
  sizes = _sizes()
  dec, fns, args, compile_s = _jax_side(sizes)
  outputs = {name: np.asarray(fn(*args)) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  torch_name = 'PyTorch eager greedy'
  child, torch_line, same = None, '', True
  if _TORCH.value:
    child = _TorchChild(sizes, args)
    same, torch_line = _check_against_torch(dec, args, outputs['greedy'],
                                            child)
    times[torch_name] = []
  for _ in range(_ROUNDS.value):
    for name, fn in fns.items():
      times[name] += _time_jax(fn, args, _REPEATS.value)
    if child:
      times[torch_name] += child.time(_REPEATS.value)
  if child:
    child.close()
  load_after = os.getloadavg()[0]

  print(f'Generated by `python -m benchmarks.decode_speed '
        f'{" ".join(sys.argv[1:])}` on {time.strftime("%Y-%m-%d")}.\n')
  print(f'- machine: {platform.machine()}, {os.cpu_count()} logical cores; '
        f'load average {load_before:.2f} -> {load_after:.2f}; JAX '
        f'{jax.__version__} on {jax.default_backend()}')
  print(f'- decoder: vocab {sizes["vocab_size"]}, D {sizes["features"]}, '
        f'{sizes["num_layers"]} layers, {sizes["num_heads"]} heads, MLP '
        f'{sizes["mlp_dim"]}, cross-attention to {_MEMORY.value} memory '
        f'tokens; batch {_BATCH.value}, max_length {sizes["max_length"]} '
        f'(BOS prompt, EOS stops a row); median of {_ROUNDS.value} x '
        f'{_REPEATS.value} timed calls per row')
  if torch_line:
    print(torch_line)
  print()
  print(_table(times, compile_s, outputs, torch_name))
  if not same:
    sys.exit('the PyTorch greedy tokens differ from mmfusion\'s.')


if __name__ == '__main__':
  app.run(main)
