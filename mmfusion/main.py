"""Entry point: `python -m mmfusion.main --config=FILE[:ARG] --workdir=DIR`.

Parses flags and hands over to `train.train_and_evaluate`. Errors that a user
can fix (`errors.UserError`) print as one sentence and exit with status 2.
"""

import os

from absl import app, flags, logging

from mmfusion.runtime import cli

ALLOW_CHANGED = flags.DEFINE_list(
    'allow_changed', [], 'Experiment keys a resume may change, e.g. '
    'optimizer.learning_rate,batch_size (README, "What may change on '
    'resume"); each change is recorded in WORKDIR/resume_changes.jsonl.')
START_OVER = flags.DEFINE_bool(
    'start_over', False, 'When every checkpoint in the workdir is damaged '
    '(they are moved to damaged_checkpoints/), train again from step 0 '
    'instead of stopping.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.tune_malloc()
  config = cli.config()
  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  cli.start_distributed()
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  train(config, cli.WORKDIR.value, allow_changed=tuple(ALLOW_CHANGED.value),
        start_over=START_OVER.value)


def train(config, workdir: str, **kwargs) -> dict:
  """`train.train_and_evaluate` as the command runs it: a `UserError` is one
  line on stderr and exit status 2; the results' place is said at the end."""
  import jax  # pylint: disable=g-import-not-at-top
  from mmfusion import train as train_lib  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  try:
    summary = train_lib.train_and_evaluate(config, workdir, **kwargs)
  except errors.UserError as e:
    cli.fail(str(e))
  if (not summary.get('preempted') and not summary.get('already_complete')
      and jax.process_index() == 0):
    print(f'Results: {os.path.join(workdir, "results.json")} (metrics.jsonl, '
          f'checkpoints/, best/, tensorboard/)', flush=True)
  return summary


if __name__ == '__main__':
  for name in cli.RUN_FLAGS + cli.MULTIHOST_FLAGS:
    flags.declare_key_flag(name)
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
