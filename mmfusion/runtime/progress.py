"""A progress bar for counted work (rows predicted, examples built).

On a terminal it redraws one `[####....] done/total what` line; in a log (no
TTY) it prints plain lines, at most one per tenth of the work, so no `\\r`
or escape codes end up in files.
"""

import sys

WIDTH = 24


class Tally:
  """`Tally(total, 'stamps').update(done)`; quiet when `total < minimum`."""

  def __init__(self, total: int, what: str, *, minimum: int = 1,
               stream=None):
    self.total, self.what = total, what
    self.stream = stream or sys.stdout
    self.quiet = total < minimum
    self.tty = self.stream.isatty()
    self._tenth = -1  # the last tenth printed on a log

  def update(self, done: int):
    """Shows `done` of `total`; the line ends when done reaches total."""
    if self.quiet:
      return
    if self.tty:
      filled = WIDTH * done // max(self.total, 1)
      end = '\n' if done >= self.total else ''
      print(f'\r[{"#" * filled}{"." * (WIDTH - filled)}] {done:,}/'
            f'{self.total:,} {self.what}', end=end, file=self.stream,
            flush=True)
      return
    tenth = 10 * done // max(self.total, 1)
    if tenth > self._tenth:
      self._tenth = tenth
      print(f'{done:,}/{self.total:,} {self.what}', file=self.stream,
            flush=True)
