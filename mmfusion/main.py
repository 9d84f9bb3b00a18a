"""Entry point: `python -m mmfusion.main --config=FILE[:ARG] --workdir=DIR`.

Parses flags and hands over to `train.train_and_evaluate`. Errors that a user
can fix (`errors.UserError`) print as one sentence and exit with status 2.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. experiments/configs/seed.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, metrics and results go; re-running '
    'with the same workdir resumes.')
_CACHE = flags.DEFINE_string(
    'compilation_cache', os.path.expanduser('~/.cache/mmfusion/jax'),
    'Persistent XLA compilation cache directory ("" turns it off).')
flags.mark_flags_as_required(['config', 'workdir'])


def _parse_flags(argv):
  """absl flag parsing, with bad flags told in one sentence, no traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if '--config' in lines[0] and len(lines) > 1:  # config file did not load
      _fail(f'cannot load the --config file: {lines[-1]}; pass the path of a '
            f'config file such as experiments/configs/seed.py.')
    _fail(f'{lines[0].rstrip(".")}; see --helpfull for the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    key = re.findall(r"'([^'\\]+)", str(e))
    bad = [a.split('=')[0] for a in argv if a.startswith('--config.')
           and key and key[0] in a.split('=')[0].split('.')]
    hint = re.findall(r'Did you mean "[^"]+"', str(e))
    _fail(f'the config has no key {bad[0] if bad else str(e)!r}'
          f'{" (" + hint[0].lower() + "?)" if hint else ""}; fix the flag, or '
          f'add the key to the config file.')


def _fail(message: str):
  print(f'mmfusion: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # After flag parsing, so XLA_FLAGS set by a launcher apply.
  from mmfusion import errors, train
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  try:
    config = _CONFIG.value
    config.get('seed')  # A config file that failed to load raises here.
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    _fail(f'cannot load the --config file ({reason}); pass the path of a '
          f'config file such as experiments/configs/seed.py.')
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except errors.UserError as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
