"""benchmarks/manifest_scale.py at 300 rows: every bad-row variant reported,
the good rows built, and a checker that does catch a wrong report."""

import pytest

from benchmarks import manifest_scale as ms


@pytest.mark.parametrize('fmt', ['jsonl', 'csv'])
def test_every_bad_row_is_reported_and_every_good_row_built(tmp_path, fmt):
  # 0.2 x 300 = 60 bad rows: every variant (about 30) at least once.
  plan = ms.generate(str(tmp_path), rows=300, bad_fraction=0.2, seed=1,
                     fmt=fmt)
  variants = [name for name, formats, fn in ms.VARIANTS + ms.GAP_VARIANTS
              if fmt in formats.split() and getattr(fn, 'file_kind', None)
              in (None, *(k for k, _ in plan.media.bad))]
  assert sorted(plan.variants_used) == sorted(variants)
  assert len(plan.bad) == 60 and len(plan.good) == 240
  builder, seconds, scan_seconds = ms.build(plan)
  assert 0 < scan_seconds < seconds
  problems, figures = ms.check(plan, builder)
  assert not problems, '\n'.join(problems[:20])
  assert figures['reported'] == 60 and figures['built'] == 240
  assert not any(k.startswith('?') for k in figures['reasons'])

  # The checker is not vacuous: a report that differs from the plan fails.
  line, (ident, kinds, name) = next(iter(plan.bad.items()))
  del plan.bad[line]
  plan.bad[1_000_000] = (ident, kinds, name)
  problems, _ = ms.check(plan, builder)
  assert any(f'line {line} (no row) is reported' in p for p in problems)
  assert any('line 1000000' in p and 'not reported' in p for p in problems)
  good_line, _, row = next(iter(plan.good.values()))
  row['label'] = next(l for l in ms.LABELS if l != row['label'])
  problems, _ = ms.check(plan, builder)
  assert f'line {good_line}: label differs from the row\'s' in problems


def test_reason_parts_split_and_classify():
  reason = ("no label; split 'a; b' is not a name like train or test; "
            "image 'x.npy': unreadable (bad; worse); age \"{'a': 1}\" is not "
            "a finite number; id 'r1' repeats line 7")
  assert ms.reason_kinds(reason) == ['bad_split', 'duplicate_id@7',
                                     'image_unreadable', 'no_label',
                                     'number:age']
  assert ms.reason_kinds('something new') == ['?']
