"""What the command-line tools share: the flags they have in common (--config,
--workdir, --compilation_cache, --tune_malloc, --notes), and bad input told in
one sentence (`mmfusion: error: ...` on stderr, exit status 2, no traceback).

Used by `mmfusion.main`, `mmfusion.cost`, `experiments.ablate` and
`benchmarks`; defining a shared flag here, once, lets them be imported into
one process. Imports no JAX, so a launcher's XLA_FLAGS still apply after flag
parsing.
"""

import os
import re
import sys

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. mmfusion/configs/seed.py.',
    lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, "Where checkpoints, metrics and results go (an ablation's "
    'runs and report); re-running with the same workdir resumes.')
COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', os.path.expanduser('~/.cache/mmfusion/jax'),
    'Persistent XLA compilation cache directory ("" turns it off).')
TUNE_MALLOC = flags.DEFINE_bool(
    'tune_malloc', True, "Keep freed memory in glibc's heap for reuse "
    "(mmfusion/malloc.py): XLA:CPU's per-step temporaries then skip the page "
    'faults of fresh mmap-ed blocks (faster CPU steps; the process keeps its '
    'peak memory until it exits).')
NOTES = flags.DEFINE_string(
    'notes', None, 'A Markdown file (what was found, what is left) that the '
    'written report ends with.')


def tune_malloc() -> bool:
  """Applies --tune_malloc; call before JAX starts its threads."""
  from mmfusion.runtime import malloc  # pylint: disable=g-import-not-at-top
  return malloc.tune_malloc() if TUNE_MALLOC.value else False


def use_compilation_cache():
  """Applies --compilation_cache; call after flag parsing."""
  if COMPILATION_CACHE.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE.value)


def parse_flags(argv):
  """absl flag parsing, with bad flags told in one sentence, no traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if '--config' in lines[0] and len(lines) > 1:  # config file did not load
      fail(f'cannot load the --config file: {lines[-1]}; pass the path of a '
           f'config file such as mmfusion/configs/seed.py.')
    fail(f'{lines[0].rstrip(".")}; see --helpfull for the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    key = re.findall(r"'([^'\\]+)", str(e))
    bad = [a.split('=')[0] for a in argv if a.startswith('--config.')
           and key and key[0] in a.split('=')[0].split('.')]
    hint = re.findall(r'Did you mean "[^"]+"', str(e))
    fail(f'the config has no key {bad[0] if bad else str(e)!r}'
         f'{" (" + hint[0].lower() + "?)" if hint else ""}; fix the flag, or '
         f'add the key to the config file.')


def fail(message: str):
  print(f'mmfusion: error: {message}', file=sys.stderr)
  sys.exit(2)


def config():
  """The --config ConfigDict, or one sentence if its file did not load."""
  try:
    value = CONFIG.value
    value.get('seed')  # A config file that failed to load raises here.
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    fail(f'cannot load the --config file ({reason}); pass the path of a '
         f'config file such as mmfusion/configs/seed.py.')
  return value
