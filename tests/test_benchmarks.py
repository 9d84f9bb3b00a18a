"""The benchmark harness on the seed model for a couple of steps, with and
without PyTorch (only the PyTorch parts skip when torch is not installed)."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import report, run, specs
from mmfusion.configs import seed
from mmfusion import cost, models
from mmfusion.nn import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_PARAMS = (100 * 64 + 64) + (50 * 64 + 64) + 2 * 64 + (128 * 10 + 10)


def _seed_spec():
  return specs.get_spec('seed', batch_size=8)


@pytest.mark.slow  # the harness in child processes
@pytest.mark.parametrize('isolate,repeats', [('--isolate', 1),
                                             ('--noisolate', 2)])
def test_command_line_times_the_seed_model_without_pytorch(tmp_path, data_dir,
                                                           isolate, repeats):
  out = tmp_path / 'results.md'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--models=seed', '--fusions=',
       '--batch_size=8', '--steps=2', '--warmup=1', '--rounds=1',
       '--pipeline_batches=2', f'--data_dir={data_dir}', '--vmap=0',
       '--torch=false', '--quiet_wait=0', isolate, f'--repeats={repeats}',
       f'--out={out}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert '`python -m benchmarks.run --models=seed --fusions= ' in text
  assert ('in a fresh process' in text) == (isolate == '--isolate')
  assert ('in 2 passes over all rows' in text) == (repeats == 2)
  assert 'GPU: not measured yet' in text
  row = next(l for l in text.splitlines() if l.startswith('| seed |'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[:3] == ['seed', '8', f'{SEED_PARAMS:,}']
  assert float(cells[3]) > 0 and float(cells[6]) > 0  # compile s, step ms
  assert cells[8] == '-'  # no PyTorch time
  pipe = next(l for l in text.splitlines() if l.startswith('| seed | synthetic'))
  assert float(pipe.split('|')[4].replace(',', '')) > 0  # examples/s


@pytest.mark.slow  # the harness in child processes
def test_a_row_in_its_own_process_comes_back_as_json(monkeypatch):
  """What --isolate does per row: a `--row` child gets this run's flags and
  returns its row, its CPU readings and its PyTorch line."""
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(sys, 'argv', [
      'run', '--batch_size=8', '--steps=2', '--warmup=1', '--rounds=1',
      '--torch=false', '--quiet_wait=0', '--row=ignored'])
  out = run.row_in_child('seed/sum')
  assert out['row']['name'] == 'seed/sum' and out['row']['batch'] == 8
  assert out['row']['jax_ms'] > 0 and out['row']['torch_ms'] is None
  assert out['torch'] == 'not run (--torch=false)'
  with pytest.raises(RuntimeError, match='row seed/nonesuch'):
    run.row_in_child('seed/nonesuch')


def test_repeats_merge_into_medians_and_a_ratio_range():
  rows = [{'name': 'av', 'batch': 64, 'jax_ms': j, 'torch_ms': t,
           'compile_s': c, 'busy': b, 'note': ''}
          for j, t, c, b in [(20.0, 25.0, 4.0, 0.01), (30.0, 25.0, 6.0, 0.03),
                             (24.0, 24.0, 5.0, None)]]
  row = run.merge_repeats(rows)
  assert (row['jax_ms'], row['torch_ms'], row['compile_s']) == (24.0, 25.0, 5.0)
  assert row['batch'] == 64 and row['busy'] == 0.03
  assert row['ratios'] == [0.8, 1.2, 1.0]
  row.update(params=1, gflops=1.0, peak_mb=1.0)
  assert '**1.00x** (0.80-1.20)' in report.step_table([row])
  assert run.merge_repeats(rows[:1]) is rows[0]


def test_flax_rows_set_the_kernels_key():
  """A `+flax` row is its model with config.model.kernels=flax; only models
  with a module built from kernels get one."""
  flax_av = specs.get_spec('av', kernels='flax')
  assert flax_av.name == 'av (flax kernels)'
  assert flax_av.config.model.kernels == 'flax'
  assert specs.get_spec('av').config.model.kernels == 'auto'
  assert models.from_config(flax_av.config.model, 10).kernels is kernels.FLAX
  assert [specs.takes_kernels(specs.get_spec(m)) for m in specs.MODELS] == [
      False, True, True]  # seed (MLPs, concat), av (CNNs), transformer
  assert specs.takes_kernels(specs.get_spec('seed', 'cross_attention'))


@pytest.mark.slow  # the harness in child processes
def test_pytorch_runs_side_by_side_in_a_child_process():
  import torch  # pylint: disable=g-import-not-at-top,unused-import
  from benchmarks import torch_bench  # pylint: disable=g-import-not-at-top
  worker = torch_bench.Worker()
  try:
    row = run.time_model(_seed_spec(), worker, steps=2, warmup=1, rounds=2)
  finally:
    worker.close()
  assert row['torch_params'] == SEED_PARAMS
  assert row['torch_ms'] > 0
  assert '**' in report.step_table([row])  # the mmfusion / PyTorch ratio


@pytest.mark.slow  # PyTorch ports of every benchmark model
@pytest.mark.parametrize('name,fusion', [
    ('seed', None), ('av', None), ('transformer', None), ('seed', 'sum'),
    ('av', 'tensor'),
    ('seed', 'late_logits'), ('seed', 'late_probs'), ('av', 'late_poe'),
    ('seed', 'late_weighted'), ('seed', 'late_stacking'),
    ('seed', 'early'), ('av', 'early'), ('seed', 'gated'), ('seed', 'nlgate'),
    ('seed', 'low_rank_tensor'), ('seed', 'multiplicative'), ('seed', 'film'),
    ('seed', 'cross_attention'), ('seed', 'perceiver'), ('av', 'perceiver'),
    ('seed_3mod', 'nlgate'), ('seed_3mod', 'multiplicative'),
    ('seed_3mod', 'film'), ('seed_3mod', 'cross_attention')])
def test_pytorch_port_computes_the_same_logits(name, fusion):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  spec = specs.get_spec(name.removesuffix('_3mod'), fusion, batch_size=4)
  if name == 'seed_3mod':  # two other modalities to attend, merge or condition on
    spec = dataclasses.replace(spec, config=seed.get_config('redundancy_3mod'))
    spec.config.model.fusion = fusion
  abstract, num_classes = specs.input_spec(spec.config, 4)
  batch = specs.make_batch(abstract, num_classes, spec.config)
  names = sorted(spec.config.model.encoders)
  # Examples: all present, first absent, last absent, both absent.
  batch[f'present/{names[0]}'] = np.array([True, False, True, False])
  batch[f'present/{names[-1]}'] = np.array([True, True, False, False])
  model = models.from_config(spec.config.model, num_classes)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)['params']
  # Biases, missing-modality embeddings and late scores start at zero: nudge
  # every parameter so that a port that ignores one gives other logits.
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32), params)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, batch)[0])
  port = torch_models.build(
      spec.config.model, {m: batch[m].shape[1:] for m in names}, num_classes)
  counts = cost.param_counts(params)
  for m in names:  # nn.GRU has 2 x features more biases per layer
    enc = spec.config.model.encoders[m]
    if enc['name'] == 'gru' and fusion != 'early':
      counts[f'encoder_{m}'] += 2 * enc['features'] * enc.get('num_layers', 1)
      counts['total'] += 2 * enc['features'] * enc.get('num_layers', 1)
  assert torch_models.param_counts(port) == counts
  torch_models.load_flax_params(port, params).eval()
  with torch.no_grad():
    ours = port({k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32
                                     else v) for k, v in batch.items()})
  np.testing.assert_allclose(ours.numpy(), logits, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # the harness in child processes
def test_whole_runs_times_k_sequential_runs_against_one_vmapped(tmp_path,
                                                                 data_dir):
  from benchmarks import whole_runs  # pylint: disable=g-import-not-at-top
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  sets = ['batch_size=16', 'total_steps=6', 'eval_every=6', 'log_every=3',
          'optimizer.warmup_steps=2', f'data.data_dir={data_dir}',
          "data.overrides={'num_train': 256, 'num_validation': 64, "
          "'num_test': 64}"]
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.whole_runs',
       '--run_config=seed:uniqueness_image,runlocal', '--k=2',
       *(f'--set={s}' for s in sets), f'--runs_dir={tmp_path}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = proc.stdout.strip().splitlines()[-1]
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[:2] == ['seed:uniqueness_image,runlocal', '2']
  total, each = cells[2].split(' ', 1)
  assert float(total) == pytest.approx(
      sum(map(float, each.strip('()').split(', '))), abs=0.11)
  assert float(cells[4]) == pytest.approx(float(cells[3]) / float(total),
                                          abs=0.01)
  run_dir = tmp_path / 'seed_uniqueness_image_runlocal'
  seeds = [whole_runs.seed_accuracies(str(run_dir / f'seq{s}'))[0]
           for s in (0, 1)]
  members = whole_runs.seed_accuracies(str(run_dir / 'vmap'))
  assert len(members) == 2
  # Member k of the vmapped run is the run with seed k.
  np.testing.assert_allclose(members, seeds, atol=0.02)


@pytest.mark.slow  # the harness in child processes
def test_op_profile_sums_the_step_ops_of_a_trace():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.op_profile', '--model=seed',
       '--traced_steps=3', '--top=3'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith('seed: ') and 'op events' in lines[0]
  rows = [l for l in lines if l.startswith('| ') and 'op kind' not in l]
  assert 1 <= len(rows) <= 3
  assert all(float(r.split('|')[2]) >= 0 for r in rows)
  assert float(rows[0].split('|')[2]) > 0  # the largest kind took time


@pytest.mark.slow  # MiniLM and PyTorch in a child process
def test_finetune_step_times_mmfusion_against_pytorch():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.finetune_step', '--encoder=minilm',
       '--timed_steps=1'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = proc.stdout.strip().splitlines()[-1]
  cells = [c.strip() for c in row.strip('|').split('|')]
  full, frozen, torch_full = (float(c.removesuffix(' ms')) for c in cells[1:4])
  assert cells[0] == 'batch 32' and min(full, frozen, torch_full) > 0
  assert float(cells[4].removesuffix('x')) == pytest.approx(
      full / torch_full, abs=0.01)
  assert frozen < full  # no backward pass through the encoder


@pytest.mark.slow  # two worker processes
def test_input_decode_reads_the_same_batches_with_worker_processes(tmp_path):
  """Grain's worker processes need a dataset that pickles; they must give
  the batches the loop's threads give, and every rate is measured."""
  import grain
  from absl import flags
  from benchmarks import input_decode
  from mmfusion.data import pipeline
  from tests.helpers import tiny_config
  config = tiny_config(str(tmp_path))
  decoded, builder = input_decode.decode_rate(config.data, str(tmp_path / 'b'))
  assert decoded > 0 and builder.is_prepared()

  def batches(workers):
    ds = pipeline.train_batches(
        builder.as_data_source(split='train'), batch_size=16, seed=3,
        modalities=config.data.modalities, in_memory_bytes=0)
    if workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    it = iter(ds)
    return [next(it) for _ in range(5)]

  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
    flags.FLAGS.mark_as_parsed()
  for a, b in zip(batches(0), batches(2)):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert input_decode.read_rate(builder, config, 0, 3) > 0
