"""benchmarks/soak.py: a run killed in a checkpoint write ends with the
uninterrupted run's parameters, metrics and results (the script's own check;
tests/test_reliability.py kills at a random step)."""

import random

import pytest

from benchmarks import soak

pytestmark = pytest.mark.slow  # a run killed again and again


def test_main_target_killed_in_a_write_ends_identical(tmp_path, data_dir):
  target = soak.Main(data_dir, total=30, checkpoint_every=3, eval_every=15)
  record, problems = soak.soak(target, str(tmp_path), kills=1,
                               write_fraction=1.0, rng=random.Random(0),
                               alongside=True)
  assert not problems, (problems, record['kill_log'])
  assert record['kills'] == 1 and record['aimed_at_write'] == 1
  assert 'aimed at a write' in record['kill_log'][0]
  assert record['attempts'] == 2
  assert record['max_param_diff'] == 0.0
  assert record['metrics_equal'] and record['results_json_equal']
  text = soak.markdown(target, record, problems, 'python -m benchmarks.soak',
                       'test machine', 2)
  assert '`--target=main`: identical' in text
