r"""The same training run with each kernel set (`model.kernels`).

  python -m benchmarks.loss_curve --config=mmfusion/configs/av_digits.py \
      --config.total_steps=300 --config.data.data_dir=DIR \
      [--kernel_sets=flax,xla_cpu]

Runs `train.train_and_evaluate` once per kernel set in fresh workdirs, with
`config.model.kernels` set to it, and prints the training loss of the first
two at every logged step (as window means), their largest difference, the
validation accuracy and each run's wall time. The kernel sets compute the
same function, so the curves should agree to float rounding.
"""

import json
import os
import tempfile
import time

from absl import app, flags, logging

from mmfusion.runtime import cli

_KERNEL_SETS = flags.DEFINE_list(
    'kernel_sets', ['flax', 'xla_cpu'],
    'Two values of config.model.kernels to train with (mmfusion/nn/kernels).')


def _train(config, kernel_set: str) -> tuple[list, dict, float]:
  from mmfusion import train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.model.kernels = kernel_set
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    summary = train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
  losses = [(r['step'], r['loss']) for r in rows if r['split'] == 'train']
  return losses, summary, seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if len(_KERNEL_SETS.value) != 2:
    raise app.UsageError(f'--kernel_sets={",".join(_KERNEL_SETS.value)}: '
                         'pass two, e.g. flax,xla_cpu.')
  cli.tune_malloc()
  logging.set_verbosity(logging.ERROR)
  config = cli.config()
  name0, name1 = _KERNEL_SETS.value
  before, summary0, s0 = _train(config, name0)
  after, summary1, s1 = _train(config, name1)
  # Float rounding differences grow chaotically over many steps, so the
  # curves are compared step by step early on and as window means later.
  window = max(1, len(before) // 10)
  print(f'\n| steps | mean loss ({name0}) | mean loss ({name1}) | largest '
        'step difference |')
  print('|---|---|---|---|')
  for i in range(0, len(before), window):
    a = [l for _, l in before[i:i + window]]
    b = [l for _, l in after[i:i + window]]
    print(f'| {before[i][0]}-{before[i + len(a) - 1][0]} | '
          f'{sum(a) / len(a):.4f} | {sum(b) / len(b):.4f} | '
          f'{max(abs(x - y) for x, y in zip(a, b)):.1e} |')
  acc = lambda s: s['validation']['accuracy']
  print(f'\nvalidation accuracy {acc(summary0):.4f} vs {acc(summary1):.4f}; '
        f'wall time (compile, data, training, evaluation) {s0:.1f} s vs '
        f'{s1:.1f} s')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
