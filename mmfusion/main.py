"""Entry point: `python -m mmfusion.main --config=FILE[:ARG] --workdir=DIR`.

Parses flags and hands over to `train.train_and_evaluate`. Errors that a user
can fix (`errors.UserError`) print as one sentence and exit with status 2.
"""

from absl import app, flags, logging

from mmfusion.runtime import cli

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'Multi-host: HOST:PORT of process 0, the same '
    'on every process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 1, 'Multi-host: how many processes (one per host).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', 0, 'Multi-host: this process, 0 .. num_processes - 1.')
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    'distributed_auto', False, 'Multi-host: let jax.distributed.initialize '
    'read the cluster (TPU pod, SLURM, Open MPI) instead of the flags above.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.tune_malloc()
  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  from mmfusion import sharding, train  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  config = cli.config()
  try:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value, _DISTRIBUTED_AUTO.value)
    train.train_and_evaluate(config, cli.WORKDIR.value)
  except errors.UserError as e:
    cli.fail(str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
