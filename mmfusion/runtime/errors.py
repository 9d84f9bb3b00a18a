"""The one exception type that speaks to the user.

A `UserError` carries a single sentence naming what was wrong and what would be
right. `mmfusion.main` prints it without a traceback and exits non-zero; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad flags, config values, names, files or data, explained in one sentence."""


def unknown_name(kind: str, name: str, known) -> UserError:
  """The error for a registry lookup that failed, listing what would work."""
  return UserError(
      f'unknown {kind} {name!r}; choose one of: {", ".join(sorted(known))}.')
