"""Predictions of a trained model for the rows of a CSV or JSONL file.

  python -m mmfusion.predict --workdir=W --input=new.csv --out=preds.jsonl \\
      [--checkpoint=best|latest|STEP] [--member=K] [--embeddings=FILE.npy] \\
      [--skip_bad_rows]
  python -m mmfusion.predict --workdir=W --split=test --out=preds.jsonl \\
      [--embeddings=FILE.npy]    # a split of the run's own dataset

The input is a manifest (see mmfusion/data/manifest.py) whose rows need no
`label` or `split`: `id`, `image` and `audio` paths (relative to the input's
folder), `text`, the number columns the model was trained on; an empty cell
leaves that modality out. Rows are read and checked as the `manifest`
builder does and preprocessed as training did (`mmfusion.data.examples`).

The output has one JSON line per row, in input order, as the run's task
writes it: classification {"id", "prediction", "probabilities": {class
name: p}}, multilabel the same with "prediction" the labels at p >= 0.5,
regression {"id", "prediction": {target: value}}, contrastive {"id",
"present": {"a", "b"}} (its embeddings go to --embeddings: .npz, or .npy
of both towers side by side). `--embeddings` saves the fused embedding
of every row written ([N, D], [N, K, D] for the members of a vmapped run;
late fusion, which has none: the modalities' embeddings side by side), or
all embeddings by name in a .npz file. Bad rows stop the command with one
sentence naming each (line and reason), exit status 2; with --skip_bad_rows
they are left out, listed in `<out>.skipped_rows.tsv` and counted on
stdout. Nothing is written unless the command succeeds. A long input shows
a progress bar on a terminal, plain lines otherwise.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from mmfusion.runtime import cli
from mmfusion.runtime import progress

_INPUT = flags.DEFINE_string(
    'input', None, 'CSV or JSONL file with one example per row (a manifest '
    'without label or split).')
_SPLIT = flags.DEFINE_string(
    'split', None, 'Instead of --input: a split of the dataset the run '
    'trained on (ids: its `id` feature, else the example index).')
CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'best', 'best (the best validation step), latest, or a '
    'step number.')
MEMBER = flags.DEFINE_integer(
    'member', None, 'One member of a vmapped run (config.vmap); unset: the '
    "mean of all members' probabilities.")
_EMBEDDINGS = flags.DEFINE_string(
    'embeddings', None, 'Save embeddings here: .npy for the fused embedding '
    '[N, D] (late fusion: the modalities side by side), .npz for all.')
_SKIP = flags.DEFINE_bool(
    'skip_bad_rows', False, 'Leave bad rows out (listed in '
    '<out>.skipped_rows.tsv) instead of stopping.')

CHUNK = 1024  # rows read, checked and predicted at a time


def report_path(out: str) -> str:
  """Where the skipped rows of `out` are listed."""
  return os.path.splitext(out)[0] + '.skipped_rows.tsv'


def read_input(path: str, data):
  """[(line, id, row)] of the input file; one sentence for a column that is
  no input of the model."""
  from mmfusion.data import examples  # pylint: disable=g-import-not-at-top
  from mmfusion.data import manifest  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  columns, rows = manifest.read_rows(os.path.abspath(path),
                                     require_label=False)
  unknown = examples.unknown_keys(data, columns)
  if unknown:
    raise errors.UserError(
        f'the --input {path!r} has column(s) {", ".join(unknown)}, which the '
        f'model was not trained on (it takes {examples.inputs(data)}); drop '
        f'or rename them.')
  return [(line, str(row.get('id') or '').strip() or str(line), row)
          for line, row in rows]


def _example(model, row, root: str) -> dict:
  """The preprocessed example of one row; BadExample lists its problems."""
  from mmfusion.data import examples  # pylint: disable=g-import-not-at-top
  if '__error__' in row:  # a JSONL line that is no JSON object
    raise examples.BadExample(row['__error__'])
  return examples.preprocess(model.data, row, root)


def predict_rows(model, rows, root: str, skip: bool, tally=None):
  """(Predictions of the good rows or None, [(line, id, reason)] of the bad).

  Rows go through in chunks, so memory holds one chunk's arrays. Without
  `skip`, prediction stops at the first bad row but checking goes on, so
  the error can name every bad row.
  """
  from mmfusion.data import examples  # pylint: disable=g-import-not-at-top
  bad, outputs, ids, seen = [], [], [], {}
  for start in range(0, len(rows), CHUNK):
    good = []
    for line, ident, row in rows[start:start + CHUNK]:
      problems = [f'id {ident!r} repeats line {seen[ident]}'] if (
          ident in seen) else []
      seen.setdefault(ident, line)
      try:
        example = _example(model, row, root)
      except examples.BadExample as e:
        problems.insert(0, str(e))
      if problems:
        bad.append((line, ident, '; '.join(problems)))
      else:
        good.append((ident, example))
    if good and (skip or not bad):
      ids += [ident for ident, _ in good]
      outputs.append(model.apply_batch(examples.collate(
          [example for _, example in good])))
    if tally:
      tally.update(min(start + CHUNK, len(rows)))
  if not outputs:
    return None, bad
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  return model.predictions(merged, ids), bad


def _embeddings(predictions, path: str):
  """Saves what --embeddings asks for (see the module docstring)."""
  emb = predictions.embeddings
  if path.endswith('.npz'):
    np.savez(path, **emb)
  elif 'fused' in emb:
    np.save(path, emb['fused'])
  elif 'a' in emb and 'b' in emb:  # contrastive: the two towers
    np.save(path, np.concatenate([emb['a'], emb['b']], axis=-1))
  else:
    np.save(path, np.concatenate([emb[m] for m in sorted(emb)], axis=-1))


def _write_lines(path: str, lines):
  """Writes `lines` to `path` at once (a temporary file, then renamed)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(lines)
  os.replace(tmp, path)


def run(workdir: str, input_path: str, out: str, *, checkpoint='best',
        member=None, embeddings=None, skip_bad_rows=False) -> dict:
  """The command: {'written', 'skipped'}; UserError for bad input."""
  from mmfusion import inference  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(input_path):
    raise errors.UserError(
        f'there is no --input file {input_path!r}; pass a .csv or .jsonl '
        f'file with one example per row.')
  for path in filter(None, (out, embeddings)):
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
      raise errors.UserError(f'the folder of {path!r} does not exist; '
                             f'create it first.')
  model = inference.load(workdir, checkpoint, member)
  rows = read_input(input_path, model.data)
  root = os.path.dirname(os.path.abspath(input_path))
  tally = progress.Tally(len(rows), 'rows', minimum=CHUNK + 1)
  predictions, bad = predict_rows(model, rows, root, skip_bad_rows, tally)
  if bad and not skip_bad_rows:
    listed = '; '.join(f'line {n} ({why})' for n, _, why in bad)
    raise errors.UserError(
        f'the --input {input_path!r} has {len(bad)} bad row(s): {listed}; fix '
        f'them, or pass --skip_bad_rows to leave them out (they are then '
        f'listed in {report_path(out)}).')
  if predictions is None:
    raise errors.UserError(f'the --input {input_path!r} has no row to '
                           f'predict; add rows, or fix the bad ones.')
  if skip_bad_rows:
    _write_lines(report_path(out), ['line\tid\treason\n'] + [
        f'{n}\t{i}\t{why}\n' for n, i, why in bad])
  if embeddings:
    _embeddings(predictions, embeddings)
  _write_lines(out, [json.dumps(r, ensure_ascii=False) + '\n'
                     for r in predictions.rows()])
  return {'written': len(predictions.ids), 'skipped': len(bad)}


def run_split(workdir: str, split: str, out: str, *, checkpoint='best',
              member=None, embeddings=None) -> dict:
  """--split: the predictions of a split of the run's own dataset, in its
  order (what evaluation scored); UserError for bad input."""
  from mmfusion import inference  # pylint: disable=g-import-not-at-top
  from mmfusion.data import pipeline  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  model = inference.load(workdir, checkpoint, member)
  builder = pipeline.get_builder(model.config.data)
  pipeline.prepare(builder)
  if split not in builder.info.splits:
    raise errors.UserError(
        f'--split={split}: {builder.info.full_name} has the splits '
        f'{", ".join(builder.info.splits)}; pass one of them.')
  source = builder.as_data_source(split=split)
  outputs, ids = [], []
  tally = progress.Tally(len(source), 'rows', minimum=CHUNK + 1)
  for batch in pipeline.eval_batches(source, batch_size=CHUNK,
                                     modalities=model.data.modalities,
                                     targets=()):
    valid = batch.pop('valid')
    start = len(ids)
    ids += [_split_id(source, i) for i in range(start, start + valid.sum())]
    outputs.append({k: v[valid] for k, v in model.apply_batch(batch).items()})
    tally.update(len(ids))
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  predictions = model.predictions(merged, ids)
  if embeddings:
    _embeddings(predictions, embeddings)
  _write_lines(out, [json.dumps(r, ensure_ascii=False) + '\n'
                     for r in predictions.rows()])
  return {'written': len(ids), 'skipped': 0}


def _split_id(source, i: int):
  """The `id` feature of example i (bytes as text), else its index."""
  value = source[i].get('id', i) if hasattr(source[i], 'get') else i
  return value.decode() if isinstance(value, bytes) else value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  missing = [f'--{name}' for name, holder in (
      ('workdir', cli.WORKDIR), ('out', cli.OUT)) if not holder.value]
  if missing:
    cli.fail(f'{" and ".join(missing)} must be given; see --help.')
  if bool(_INPUT.value) == bool(_SPLIT.value):
    cli.fail('pass either --input=FILE or --split=NAME (one of them); see '
             '--help.')
  try:
    if _SPLIT.value:
      done = run_split(cli.WORKDIR.value, _SPLIT.value, cli.OUT.value,
                       checkpoint=CHECKPOINT.value, member=MEMBER.value,
                       embeddings=_EMBEDDINGS.value)
    else:
      done = run(cli.WORKDIR.value, _INPUT.value, cli.OUT.value,
                 checkpoint=CHECKPOINT.value, member=MEMBER.value,
                 embeddings=_EMBEDDINGS.value, skip_bad_rows=_SKIP.value)
  except errors.UserError as e:
    cli.fail(str(e))
  if done['skipped']:
    print(f'{done["skipped"]} bad row(s) of {_INPUT.value} were skipped; see '
          f'{report_path(cli.OUT.value)}.', flush=True)
  print(f'Wrote {done["written"]} prediction(s) to {cli.OUT.value}.',
        flush=True)


if __name__ == '__main__':
  for name in ('workdir', 'out', 'compilation_cache'):
    flags.declare_key_flag(name)  # listed by --help
  app.run(main, flags_parser=cli.parse_flags)
