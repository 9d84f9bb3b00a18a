"""The configs that ship with mmfusion: one file per study, `get_config(arg)`
in each (`seed`, `av_digits`; `common` holds the run options they share)."""

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The packaged configs a --config value or `mmfusion.get_config` may name."""
  return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith('.py')
                and not f.startswith('_') and f != 'common.py')
