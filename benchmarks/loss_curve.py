r"""The same training run with flax's layers and with `mmfusion.conv`'s.

  python -m benchmarks.loss_curve --config=mmfusion/configs/av_digits.py \
      --config.total_steps=300 --config.data.data_dir=DIR [--swaps=conv,pool,norm]

Runs `train.train_and_evaluate` twice in fresh workdirs, once under
`fast_layers.flax_layers(--swaps)` and once with the encoders as they are
(mmfusion.conv), and prints
the training loss at every logged step of both, their largest difference, the
validation accuracy and each run's wall time. The swapped layers compute the
same function, so the curves should agree to float rounding.
"""

import json
import os
import tempfile
import time

from absl import app, flags, logging

from mmfusion.runtime import cli

_SWAPS = flags.DEFINE_list('swaps', ['conv', 'pool', 'norm'],
                           "Layers the first run takes from flax.")


def _train(config, swaps) -> tuple[list, dict, float]:
  from benchmarks import fast_layers  # pylint: disable=g-import-not-at-top
  from mmfusion import train  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir, fast_layers.flax_layers(swaps):
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
  cli.tune_malloc()
  logging.set_verbosity(logging.ERROR)
  config = cli.config()
  before, summary0, s0 = _train(config, tuple(_SWAPS.value))
  after, summary1, s1 = _train(config, ())
  # Float rounding differences grow chaotically over many steps, so the
  # curves are compared step by step early on and as window means later.
  window = max(1, len(before) // 10)
  print(f'\n| steps | mean loss (flax {"+".join(_SWAPS.value)}) | mean loss '
        '(mmfusion.conv) | largest step difference |')
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
