"""Joining a multi-process run (one process per host), before JAX starts.

`initialize` checks the multi-host flags (process ids, HOST:PORT, a host that
resolves, a free port on process 0, a positive timeout) in one sentence each,
then calls `jax.distributed.initialize`, saying that it waits. If the
processes do not all connect within the timeout, a watchdog tells what is
known (how many connected, whether the coordinator answers) and ends the
process: jax itself would abort it with a C++ stack dump.
"""

import logging
import math
import os
import re
import socket
import sys
import threading

import jax

from mmfusion.runtime import errors


def initialize(coordinator_address: str, num_processes: int,
                           process_id: int, auto: bool = False,
                           timeout: float = 300, on_timeout=None):
  """Joins a multi-process run (one process per host) before JAX starts.

  Waits up to `timeout` seconds for every process to connect, saying so in one
  line on stderr. If they do not all connect in time, a watchdog thread calls
  `on_timeout(error)` with the `errors.UserError` that tells what is known
  (default: print it) and then ends the process with `os._exit`, status 2 or
  the code of the `SystemExit` that `on_timeout` raises (`cli.fail` does):
  the main thread is blocked inside jax's connect, which would otherwise abort
  the process with an XLA fatal log and C++ stack trace a few seconds later,
  and a normal exit would run jax's atexit shutdown of the half-open client.
  """
  _check_timeout(timeout)
  if auto:  # TPU pods, SLURM, Open MPI, ...: JAX reads the cluster's env.
    _join('--distributed_auto found no cluster to join', timeout, on_timeout,
          waiting=f"waiting up to {timeout:g} s for the cluster's processes "
                  f'(--distributed_auto) ...',
          late=lambda: f"--distributed_auto: the cluster's processes did not "
                       f'all connect within {timeout:g} s; start every '
                       f'process, or raise --distributed_timeout.')
    return
  _check_processes(coordinator_address, num_processes, process_id)
  if num_processes > 1:
    _join(f'process {process_id} of {num_processes} cannot join the run at '
          f'{coordinator_address}', timeout, on_timeout,
          waiting=f'waiting up to {timeout:g} s for {num_processes} processes '
                  f'at {coordinator_address} (this is process {process_id}) '
                  f'...',
          late=lambda: _late(coordinator_address, num_processes, process_id,
                             timeout),
          coordinator_address=coordinator_address,
          num_processes=num_processes, process_id=process_id)


def _check_timeout(timeout: float):
  if not timeout > 0:
    raise errors.UserError(
        f'--distributed_timeout={timeout:g}: pass a positive number of '
        f'seconds to wait for every process to connect (default 300).')


def _check_processes(coordinator_address: str, num_processes: int,
                     process_id: int):
  """Multi-host flags that cannot work, told before anything waits on them."""
  if num_processes < 1:
    raise errors.UserError(
        f'--num_processes={num_processes}: pass 1 or more processes.')
  if not 0 <= process_id < num_processes:
    raise errors.UserError(
        f'--process_id={process_id} is not in 0 .. {num_processes - 1} '
        f'(--num_processes={num_processes}); give each process its own id.')
  if num_processes > 1 and not coordinator_address:
    raise errors.UserError(
        f'--num_processes={num_processes} needs --coordinator_address='
        f'HOST:PORT of process 0, the same on every process.')
  if num_processes > 1:
    _check_address(coordinator_address)
  if num_processes > 1 and process_id == 0:
    _check_port_free(coordinator_address)


def _host_port(address: str):
  """('host', port) of HOST:PORT or [IPv6]:PORT; None if it is neither."""
  host, _, port = address.rpartition(':')
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]
  elif ':' in host:  # an IPv6 address needs its brackets
    return None
  if not host or not re.fullmatch(r'[0-9]{1,5}', port):
    return None
  return (host, int(port)) if 1 <= int(port) <= 65535 else None


def _check_address(address: str):
  """A --coordinator_address that is HOST:PORT and whose host resolves."""
  host_port = _host_port(address)
  if host_port is None:
    raise errors.UserError(
        f'--coordinator_address={address} is not HOST:PORT with a port in '
        f'1 .. 65535; pass the host of process 0 and a free port, e.g. '
        f'10.0.0.1:1234 (an IPv6 host in brackets, [::1]:1234).')
  host, port = host_port
  try:
    socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  except (OSError, UnicodeError) as e:
    reason = getattr(e, 'strerror', None) or str(e) or type(e).__name__
    raise errors.UserError(
        f'--coordinator_address={address}: host {host!r} does not resolve '
        f'({reason.rstrip(".")}); pass the host name or IP address of process '
        f"0's machine.") from None


def _check_port_free(address: str):
  """Process 0 serves the coordinator on the address's port: it must be free
  (jax's RPC server fails on a taken port, and jax then crashes on exit)."""
  _, port = _host_port(address)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    try:
      probe.bind(('', port))
    except OSError as e:
      raise errors.UserError(
          f'process 0 cannot serve the coordinator at {address} (port {port}: '
          f'{e.strerror}; another program may hold it); pass a port that is '
          f"free on process 0's machine.") from None


def _late(address: str, num_processes: int, process_id: int,
          timeout: float) -> str:
  """What is known when the processes did not all connect in time.

  jax/XLA says only 'DEADLINE_EXCEEDED ... RegisterTask' on every process
  (and aborts); process 0 knows that it joined its own coordinator (if the
  address reaches it), a process > 0 whether the coordinator's port answers.
  """
  fix = ('start every process with the same --coordinator_address and '
         f'--num_processes={num_processes}, or raise --distributed_timeout')
  within = f'within {timeout:g} s'
  host, port = _host_port(address)
  answers = _answers(host, port)
  if process_id == 0 and not answers:
    return (f'process 0 serves the coordinator on port {port} but could not '
            f'reach it at {address} {within}; pass an address of process '
            f"0's own machine as --coordinator_address.")
  if process_id == 0 and num_processes == 2:
    return (f'only 1 of 2 processes connected to {address} {within} '
            f'(process 1 never did); {fix}.')
  if process_id == 0:
    return (f'not all {num_processes} processes connected to {address} '
            f'{within} (process 0 did, at least one of processes 1 .. '
            f'{num_processes - 1} did not); {fix}.')
  if not answers:
    return (f'could not reach the coordinator at {address} {within} (this is '
            f'process {process_id} of {num_processes}); start process 0 '
            f'there, or check the address, or raise --distributed_timeout.')
  return (f'reached {address}, but not all {num_processes} processes '
          f'connected there {within} (this is process {process_id}); {fix}.')


def _answers(host: str, port: int) -> bool:
  """Whether something accepts TCP connections at host:port."""
  try:
    with socket.create_connection((host, port), timeout=2):
      return True
  except OSError:
    return False


def _join(what: str, timeout: float, on_timeout, waiting: str, late,
          **kwargs):
  """jax.distributed.initialize, its failure told in one sentence."""
  print(f'mmfusion: {waiting}', file=sys.stderr, flush=True)
  joined = threading.Event()
  threading.Thread(target=_watchdog, args=(joined, timeout, late, on_timeout),
                   name='mmfusion-distributed-timeout', daemon=True).start()
  # jax's INFO lines ('Starting/Connecting to JAX distributed service ...')
  # say what `waiting` said; its warnings stay.
  jax_log = logging.getLogger('jax._src.distributed')
  level = jax_log.level
  jax_log.setLevel(max(level, logging.WARNING))
  try:
    jax.distributed.initialize(initialization_timeout=math.ceil(timeout),
                               **kwargs)
  except (RuntimeError, ValueError) as e:
    joined.set()
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise errors.UserError(f'{what} ({reason.rstrip(".")}); check the '
                           f'multi-host flags.') from None
  finally:
    joined.set()
    jax_log.setLevel(level)


def _watchdog(joined: threading.Event, timeout: float, late, on_timeout):
  """After `timeout` s without `joined`: tell `late()` and end the process."""
  if joined.wait(timeout):
    return
  error = errors.UserError(late())
  if joined.is_set():  # joined while `late` looked
    return
  code = 2
  try:
    if on_timeout is None:
      print(f'error: {error}', file=sys.stderr)
    else:
      on_timeout(error)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 2
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(code)
