"""What the command-line tools share: the flags they have in common (--config,
--workdir, --compilation_cache, --tune_malloc, --notes, the multi-host flags),
and bad input told in one sentence (`mmfusion: error: ...` on stderr, exit
status 2, no traceback).

Used by `mmfusion.main`, `mmfusion.cost`, `experiments.ablate` and
`benchmarks`; defining a shared flag here, once, lets them be imported into
one process. Imports no JAX, so a launcher's XLA_FLAGS still apply after flag
parsing.
"""

import os
import re
import sys
import traceback

from absl import flags
from ml_collections import config_flags

from mmfusion import configs

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: a file, e.g. mmfusion/configs/seed.py'
    ':synergy, or the name of one that ships in the package, e.g. '
    'seed:synergy or av_digits.py:audio.', lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, "Where checkpoints, metrics and results go (an ablation's "
    'runs and report); re-running with the same workdir resumes.')
COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', os.path.expanduser('~/.cache/mmfusion/jax'),
    'Persistent XLA compilation cache directory ("" turns it off).')
TUNE_MALLOC = flags.DEFINE_bool(
    'tune_malloc', None, "Keep freed memory in glibc's heap for reuse "
    "(mmfusion/runtime/malloc.py): XLA:CPU's per-step temporaries then skip "
    'the page faults of fresh mmap-ed blocks (faster CPU steps; the process '
    'keeps its peak memory until it exits). Unset: on when JAX will run on '
    'the CPU (JAX_PLATFORMS starts with cpu, or no GPU/TPU plugin is '
    'installed); --tune_malloc or --notune_malloc forces it.')
OUT = flags.DEFINE_string(
    'out', None, 'Where the command writes: mmfusion.predict its JSON Lines '
    'predictions, mmfusion.export a new directory, benchmarks.run its '
    'Markdown results (unset: benchmarks/RESULTS.md; "": none), '
    'experiments.report.combine its table.')
NOTES = flags.DEFINE_string(
    'notes', None, 'A Markdown file (what was found, what is left) that the '
    'written report ends with.')
COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'Multi-host: HOST:PORT of process 0, the same '
    'on every process.')
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 1, 'Multi-host: how many processes (one per host).')
PROCESS_ID = flags.DEFINE_integer(
    'process_id', 0, 'Multi-host: this process, 0 .. num_processes - 1.')
DISTRIBUTED_AUTO = flags.DEFINE_bool(
    'distributed_auto', False, 'Multi-host: let jax.distributed.initialize '
    'read the cluster (TPU pod, SLURM, Open MPI) instead of '
    '--coordinator_address, --num_processes and --process_id.')
DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout', 300, 'Multi-host: seconds to wait for every '
    'process to connect to the coordinator before giving up with an error.')

# Names for `flags.declare_key_flag` in a tool, so its --help lists them
# (absl's --help shows only the main module's key flags).
RUN_FLAGS = ('config', 'workdir', 'compilation_cache', 'tune_malloc')
MULTIHOST_FLAGS = ('coordinator_address', 'num_processes', 'process_id',
                   'distributed_auto', 'distributed_timeout')

def resolve_config(value: str) -> str:
  """A --config value naming a packaged config (`seed[:ARG]`,
  `av_digits.py[:ARG]`, `mmfusion/configs/seed.py[:ARG]`) with no such file on
  disk, as the packaged file's path; any other value unchanged."""
  path, sep, arg = value.partition(':')
  if not path or os.path.isfile(path):
    return value
  folder, name = os.path.split(os.path.normpath(path))
  name = name.removesuffix('.py')
  if (folder not in ('', os.path.join('mmfusion', 'configs'))
      or name not in configs.names()):
    return value
  return os.path.join(configs.DIR, f'{name}.py') + sep + arg


def _resolve_config_args(argv):
  """`argv` with each --config value passed through `resolve_config`."""
  out = list(argv)
  for i, arg in enumerate(out[1:], start=1):
    if arg == '--':
      break
    flag, eq, value = arg.partition('=')
    if flag in ('--config', '-config') and eq:
      out[i] = f'{flag}={resolve_config(value)}'
    elif arg in ('--config', '-config') and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def _config_hint() -> str:
  return (f'pass a config file such as mmfusion/configs/seed.py, or the name '
          f'of a packaged one ({", ".join(configs.names())})')


def wants_tune_malloc() -> bool:
  """What --tune_malloc asks for, its unset default decided (CPU only)."""
  from mmfusion.runtime import malloc  # pylint: disable=g-import-not-at-top
  wanted = TUNE_MALLOC.value
  return malloc.runs_on_cpu() if wanted is None else wanted


def tune_malloc() -> bool:
  """Applies --tune_malloc; call before JAX starts its threads."""
  from mmfusion.runtime import malloc  # pylint: disable=g-import-not-at-top
  return malloc.tune_malloc() if wants_tune_malloc() else False


def use_compilation_cache():
  """Applies --compilation_cache; call after flag parsing."""
  if COMPILATION_CACHE.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE.value)


def start_distributed():
  """Joins the multi-host run that the flags describe (nothing for one
  process); call after `tune_malloc`, before anything uses a JAX device."""
  from mmfusion.runtime import distributed  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  try:
    # Processes that do not all connect within --distributed_timeout:
    # `fail` runs on the watchdog thread, which then ends the process.
    distributed.initialize(
        COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
        DISTRIBUTED_AUTO.value, timeout=DISTRIBUTED_TIMEOUT.value,
        on_timeout=lambda error: fail(str(error)))
  except errors.UserError as e:
    fail(str(e))


def _config_file_error(error: BaseException) -> str | None:
  """'FILE, line N: Kind: message' for a config file that failed to import
  or whose get_config raised; None if `error` did not come from one."""
  chain, e = [], error
  while e is not None and len(chain) < 8:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in reversed(chain):  # the original error is the last in the chain
    if isinstance(e, SyntaxError) and e.filename:
      return (f'{e.filename}, line {e.lineno}: SyntaxError: '
              f'{e.msg}')
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(('<', sys.prefix, sys.base_prefix))
              and os.path.abspath(f.filename) != os.path.abspath(__file__)]
    if frames and not isinstance(e, flags.Error):
      message = (str(e).strip().splitlines() or [''])[0]
      return (f'{frames[-1].filename}, line {frames[-1].lineno}: '
              f'{type(e).__name__}: {message}'.rstrip(': '))
  return None


def parse_flags(argv):
  """absl flag parsing, with bad flags told in one sentence, no traceback."""
  try:
    return flags.FLAGS(_resolve_config_args(argv))
  except Exception as e:  # pylint: disable=broad-except
    where = _config_file_error(e)
    if where:
      fail(f'the --config file did not load ({where.rstrip(".")}); fix it, '
           f'or {_config_hint()}.')
    if not isinstance(e, (flags.Error, AttributeError, KeyError, TypeError,
                          ValueError)):
      raise
    _flag_error(e, argv)


def _flag_error(e: Exception, argv):
  """One sentence for a flag that did not parse."""
  if isinstance(e, flags.Error):
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if '--config' in lines[0] and len(lines) > 1:  # config file did not load
      fail(f'cannot load the --config file: {lines[-1]}; {_config_hint()}.')
    fail(f'{lines[0].rstrip(".")}; see --helpfull for the flags.')
  else:
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
    fail(f'cannot load the --config file ({reason}); {_config_hint()}.')
  return value
