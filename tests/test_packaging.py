"""What `pip install .` ships (the mmfusion package, its configs inside), and
packaged configs passed by name from any directory."""

import os
import subprocess
import sys
import tomllib

import setuptools

from mmfusion import configs
from mmfusion.runtime import cli
from tests.helpers import ROOT


def test_only_mmfusion_is_packaged_with_its_configs():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    find = tomllib.load(f)['tool']['setuptools']['packages']['find']
  packages = setuptools.find_namespace_packages(ROOT, include=find['include'])
  assert 'mmfusion.configs' in packages
  assert {p.split('.')[0] for p in packages} == {'mmfusion'}


def test_config_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no mmfusion/configs/ here
  seed = os.path.join(configs.DIR, 'seed.py')
  assert {'seed', 'av_digits'} <= set(configs.names())
  assert cli.resolve_config('seed') == seed
  assert cli.resolve_config('seed:a,runlocal') == f'{seed}:a,runlocal'
  assert cli.resolve_config('av_digits.py:audio') == os.path.join(
      configs.DIR, 'av_digits.py:audio')
  assert cli.resolve_config('mmfusion/configs/seed.py:x') == f'{seed}:x'
  for other in ('nope:x', 'common', 'other/seed.py', '', ':x'):
    assert cli.resolve_config(other) == other
  (tmp_path / 'seed.py').write_text('')
  assert cli.resolve_config('seed.py:x') == 'seed.py:x'  # a file on disk wins


def test_a_config_name_parses_outside_the_clone(tmp_path):
  code = ('import sys\nfrom mmfusion.runtime import cli\n'
          'cli.parse_flags(sys.argv)\nc = cli.config()\n'
          'print(c.data.name, c.total_steps, c.batch_size)\n')
  result = subprocess.run(
      [sys.executable, '-c', code, '--config', 'seed:synergy,runlocal',
       '--config.batch_size=8'], cwd=tmp_path, capture_output=True,
      text=True, timeout=60, env={**os.environ, 'PYTHONPATH': ROOT})
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['synthetic_interactions/synergy', '60', '8']
