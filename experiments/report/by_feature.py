r"""A generation run's metric on one split, per value of a feature and per
subset of modalities: which question types a model answers, and from what.

  python -m experiments.report.by_feature --group_by=question_type \
      --eval_split=test --score=exact_match --out=DIR/by_type.md \
      NAME=WORKDIR ...

Each WORKDIR is a trained run (one of an ablation's `cells/*/seeds_*`, or
any run's workdir); each of its members (vmapped seeds) is loaded at
`best/`, decodes the split with the modalities of each subset present
(`--kept`, e.g. `audio+text+video,text+video`; default: the full set,
then each set of all but one),
and is scored per value of `--group_by` (an integer feature of the split).
The table gives mean ± 95% CI over members, as the ablation reports do.
Value names come from the builder's `value_names()` where it has them.
"""

import os

from absl import app, flags, logging
import numpy as np

from experiments.report import stats
from mmfusion.runtime import cli

_FEATURE = flags.DEFINE_string('group_by', 'question_type',
                               'The integer feature to group examples by.')
_SPLIT = flags.DEFINE_string('eval_split', 'test', 'The split to decode.')
_METRIC = flags.DEFINE_string('score', 'exact_match',
                              'A metric of mmfusion.tasks.text_metrics.')
_SUBSETS = flags.DEFINE_list(
    'kept', [], 'Modality sets joined by + (default: the full set, then '
    'each set of all but one).')
_TITLE = flags.DEFINE_string('heading', '', 'The title of the table.')


def decoded(workdir: str, split: str, sets):
  """{kept: [K][N] texts} of the split decoded by each member with the
  modalities of each set in `sets` present, the references [N], the
  builder and the split's source. Each member is loaded once."""
  import mmfusion  # pylint: disable=g-import-not-at-top
  from mmfusion import evaluate
  from mmfusion.data import pipeline
  first = mmfusion.load(workdir, member=0)
  config, task = first.config, first.task
  builder = pipeline.get_builder(config.data)
  source = builder.as_data_source(split=split)
  refs = task.data.text_tokenizer().decode(
      np.stack([source[i]['caption'] for i in range(len(source))]))
  batches = list(pipeline.eval_batches(
      source, batch_size=config.batch_size,
      modalities=config.data.modalities, targets=task.model_inputs))
  texts = {kept: [] for kept in sets}
  for k in range(config.vmap.size):
    model = first if k == 0 else mmfusion.load(workdir, member=k)
    keys = model.input_spec(1)
    for kept in sets:
      out = []
      for batch in batches:
        batch = evaluate.only(batch, kept)
        got = model.apply_batch({n: v for n, v in batch.items() if n in keys})
        out += [t for t, v in zip(task.texts(got['tokens'], got['start']),
                                  batch['valid'].astype(bool)) if v]
      texts[kept].append(out)
  return texts, refs, builder, source


def table(runs, feature: str, split: str, metric: str, subsets) -> str:
  """Markdown: one row per (run, subset), one column per feature value."""
  import mmfusion  # pylint: disable=g-import-not-at-top
  from mmfusion.tasks import text_metrics
  score = getattr(text_metrics, metric)
  header, lines = None, []
  for name, workdir in runs:
    modalities = mmfusion.load(workdir, member=0).config.data.modalities
    sets = [tuple(s.split('+')) for s in subsets] or _default_sets(modalities)
    texts, refs, builder, source = decoded(workdir, split, sets)
    values = np.asarray([int(source[i][feature]) for i in range(len(source))])
    names = getattr(builder, 'value_names', dict)().get(feature)
    groups = sorted(set(values.tolist()))
    if header is None:
      header = [names[g] if names else str(g) for g in groups]
    for kept in sets:
      cells = []
      for g in groups + [None]:
        pick = np.ones(len(values), bool) if g is None else values == g
        per_member = [score([t for t, p in zip(member, pick) if p],
                            [r for r, p in zip(refs, pick) if p])
                      for member in texts[kept]]
        mean, ci, n = stats.mean_ci(per_member)
        cells.append(f'{mean:.3f} ± {ci:.3f}' if n > 1 else f'{mean:.3f}')
      lines.append(f'| {name} | {"+".join(kept)} | ' + ' | '.join(cells) +
                   ' |')
  head = (f'| run | modalities | {" | ".join(header)} | all |\n'
          f'|---|---|{"---|" * (len(header) + 1)}')
  return head + '\n' + '\n'.join(lines) + '\n'


def _default_sets(modalities):
  """The full set, then each set of all but one modality."""
  ms = sorted(modalities)
  return [tuple(ms)] + ([tuple(m for m in ms if m != x) for x in ms]
                        if len(ms) > 1 else [])


def main(argv):
  runs = []
  for arg in argv[1:]:
    name, sep, path = arg.partition('=')
    if not sep or not os.path.isdir(path):
      cli.fail(f'{arg!r} is not NAME=WORKDIR of a trained run; pass one per '
               f'run.')
    runs.append((name, path))
  if not runs:
    cli.fail('pass at least one NAME=WORKDIR of a trained generation run.')
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # TFDS chatter
  try:
    text = table(runs, _FEATURE.value, _SPLIT.value, _METRIC.value,
                 _SUBSETS.value)
  except errors.UserError as e:
    cli.fail(str(e))
  title = _TITLE.value or (f'{_METRIC.value} on {_SPLIT.value} by '
                           f'{_FEATURE.value}')
  doc = (f'# {title}\n\nMean ± 95% CI over each run\'s members (seeds), '
         f'decoded with only the listed modalities present.\n\n{text}')
  if cli.OUT.value:
    with open(cli.OUT.value, 'w') as f:
      f.write(doc)
  print(doc)


if __name__ == '__main__':
  app.run(main)
