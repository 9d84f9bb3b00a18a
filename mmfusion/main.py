"""Entry point: `python -m mmfusion.main --config=FILE[:ARG] --workdir=DIR`.

Parses flags and hands over to `train.train_and_evaluate`. Errors that a user
can fix (`errors.UserError`) print as one sentence and exit with status 2.
"""

import os

from absl import app, flags, logging

from mmfusion.runtime import cli


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.tune_malloc()
  config = cli.config()
  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  cli.start_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from mmfusion import train  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  workdir = cli.WORKDIR.value
  try:
    summary = train.train_and_evaluate(config, workdir)
  except errors.UserError as e:
    cli.fail(str(e))
  if not summary.get('preempted') and jax.process_index() == 0:
    print(f'Results: {os.path.join(workdir, "results.json")} (metrics.jsonl, '
          f'checkpoints/, best/, tensorboard/)', flush=True)


if __name__ == '__main__':
  for name in cli.RUN_FLAGS + cli.MULTIHOST_FLAGS:
    flags.declare_key_flag(name)
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
