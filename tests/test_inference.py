"""A trained run for inference: `mmfusion.load`, `python -m mmfusion.predict`
and `python -m mmfusion.export` reproduce what evaluation computed."""

import csv
import hashlib
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

import mmfusion
from mmfusion import build, checkpoint, evaluate, export, inference, predict
from mmfusion import train
from mmfusion.configs import av_digits, seed
from mmfusion.data import examples
from mmfusion.data import info as info_lib
from mmfusion.data import pipeline
from mmfusion.nn import kernels
from mmfusion.runtime import cli, errors
from tests import helpers
from tests.test_av_digits import TINY as AV_TINY
from tests.test_manifest import _folder, _write_csv

MODALITIES = ('image', 'audio', 'text', 'tabular')  # tabular: the age column
AV_MODALITIES = ('image', 'audio')  # the GRU of text: seconds to compile
RUN = {'num_devices': 1, 'total_steps': 2, 'eval_every': 2,
       'checkpoint_every': 1, 'log_every': 1, 'optimizer.warmup_steps': 1}


def _manifest_config(root, data_dir):
  """The README's manifest, two seed-like runs of mlp encoders (vmapped)."""
  config = seed.get_config('runlocal')
  config.data.name = 'manifest/default'
  config.data.modalities = MODALITIES
  config.data.data_dir = data_dir
  config.data.overrides = {
      'path': str(root / 'manifest.csv'), 'image_size': (12, 10),
      'audio_samples': 1000, 'text_length': 24}
  config.model.encoders = {m: {'name': 'mlp', 'features': 8}
                           for m in MODALITIES}
  config.update_from_flattened_dict({**RUN, 'batch_size': 4, 'vmap.size': 2})
  return config


def _av_config(data_dir):
  """av_digits:runlocal, its encoders shrunk, one step on a tiny build."""
  config = av_digits.get_config('+'.join(AV_MODALITIES) + ',runlocal')
  config.data.data_dir = data_dir
  config.data.overrides = dict(AV_TINY)
  config.data.extra_eval_splits = ()
  config.model.head_hidden = ()
  for options in config.model.encoders.values():
    options['features'] = 8
    if 'channels' in options:
      options['channels'] = (4,)
  config.model.encoders.audio.n_mels = 8
  config.update_from_flattened_dict({**RUN, 'batch_size': 8, 'total_steps': 1,
                                     'eval_every': 1})
  return config


@pytest.fixture(scope='session')
def manifest_run(tmp_path_factory, data_dir):
  """(config, workdir, folder, rows by id) of a run on the README folder."""
  root = tmp_path_factory.mktemp('manifest_folder')
  rows, _ = _folder(root, n=10)
  for i, row in enumerate(rows):
    row['split'] = 'train' if i < 6 else 'validation' if i < 8 else 'test'
  _write_csv(root / 'manifest.csv', rows)
  config = _manifest_config(root, data_dir)
  workdir = str(tmp_path_factory.mktemp('manifest_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir, root, {r['id']: r for r in rows}


@pytest.fixture(scope='session')
def ensemble(manifest_run):
  return mmfusion.load(manifest_run[1], 'latest')


@pytest.fixture(scope='session')
def av_run(tmp_path_factory, data_dir):
  config = _av_config(data_dir)
  workdir = str(tmp_path_factory.mktemp('av_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope='session')
def av_model(av_run):
  return mmfusion.load(av_run[1])  # best


def _source(config, split):
  builder = pipeline.get_builder(config.data)
  pipeline.prepare(builder)
  return builder.as_data_source(split=split)


def _evaluated(config, workdir, splits, subdir='checkpoints'):
  """{split: (probabilities [K, N, C] as evaluation computes them at the
  newest step of `subdir`, the split's source)}, on the training mesh."""
  run = build.run(config)
  pipeline.prepare(run.builder)
  ckpt = checkpoint.Checkpointer(workdir, subdir=subdir)
  state, _ = ckpt.restore(ckpt.latest_step(), run.sharded_abstract_state())
  ckpt.close()
  fn = jax.jit(evaluate.eval_fn(run.model, run.task, run.members))
  sources = {s: run.builder.as_data_source(split=s) for s in splits}
  probabilities = lambda source: np.stack([o['probabilities'] for o in (
      evaluate.predictions(fn, state.params, source, config, run.mesh,
                           run.task))])
  return {s: (probabilities(source), source) for s, source in sources.items()}


def _inputs(row):
  """A manifest row as predict takes it: the row itself."""
  return dict(row)


def test_predict_on_manifest_files_matches_evaluation(manifest_run, ensemble):
  config, workdir, root, by_id = manifest_run
  with open(os.path.join(workdir, 'results.json')) as f:
    members = json.load(f)['members']
  assert ensemble.ensemble and ensemble.step == config.total_steps
  member0 = mmfusion.load(workdir, 'latest', member=0)
  for split, (probs_KxNxC, source) in _evaluated(
      config, workdir, ('validation', 'test')).items():
    examples = [_inputs(by_id[source[i]['id'].decode()])
                for i in range(len(source))]
    label_N = np.asarray([source[i]['label'] for i in range(len(source))])
    out = ensemble.predict(examples, root=str(root))
    np.testing.assert_allclose(out.probabilities, probs_KxNxC.mean(0),
                               atol=1e-6)  # the members' mean
    assert out.ids == [ex['id'] for ex in examples]
    assert set(out.labels) <= {'cat', 'dog'}
    assert out.embeddings['fused'].shape == (  # [N, K, D]: concat of 8 each
        len(examples), 2, 8 * len(MODALITIES))
    one = member0.predict(examples, root=str(root))
    np.testing.assert_allclose(one.probabilities, probs_KxNxC[0], atol=1e-6)
    assert one.embeddings['image'].shape == (len(examples), 8)
    assert np.mean(one.predicted == label_N) == members[0][split][
        'accuracy']  # what evaluation scored
    assert not np.allclose(probs_KxNxC[0], probs_KxNxC[1])


def test_a_left_out_modality_is_absent(manifest_run, ensemble):
  _, _, root, by_id = manifest_run
  rows = [_inputs(by_id[f'ex{i}']) for i in range(4)]
  partial = [{**r, 'audio': ''} for r in rows[:2]] + [
      {k: v for k, v in r.items() if k != 'audio'} for r in rows[2:]]
  got = ensemble.predict(partial, root=str(root))
  batch = examples.preprocess_all(ensemble.data, rows, str(root))
  batch['present/audio'][:] = False
  want = ensemble.apply_batch(batch)
  np.testing.assert_allclose(got.probabilities, want['probabilities'],
                             atol=1e-6)
  audio_NxKxD = got.embeddings['audio']  # the encoder saw zeros for all
  np.testing.assert_allclose(audio_NxKxD, audio_NxKxD[:1].repeat(4, 0))


def test_raw_rows_become_the_builders_arrays(manifest_run):
  """Paths, arrays and number columns, including `tabular`, preprocess to
  the very arrays the manifest builder stored."""
  config, _, root, by_id = manifest_run
  builder = pipeline.get_builder(config.data)
  pipeline.prepare(builder)
  data = info_lib.from_builder(builder, ml_collections.ConfigDict({
      'name': config.data.name, 'modalities': MODALITIES}))
  assert data.preprocessing['tabular'] == {'columns': ['age']}
  source = builder.as_data_source(split='train')
  for ex in (source[i] for i in range(len(source))):
    row = by_id[ex['id'].decode()]
    from_arrays = {**row, 'image': ex['image'][..., 0] / 255.0,
                   'audio': ex['audio'][:900], 'age': None,
                   'tabular': [float(row['age'])]}
    for raw in (row, from_arrays):
      got = examples.preprocess(data, raw, str(root))
      for m in data.modalities:
        np.testing.assert_array_equal(got[m], ex[m], err_msg=m)
        assert got[f'present/{m}']
  rows = [dict(by_id['ex0'], image='nowhere.npy'), by_id['ex1'],
          dict(by_id['ex2'], age='old', video='v.npy')]
  with pytest.raises(errors.UserError) as e:
    examples.preprocess_all(data, rows, str(root))
  message = str(e.value)
  assert message.startswith('2 of the 3 examples cannot be read: example 0 (')
  for why in ("image 'nowhere.npy': file not found", "'video' is not an "
              "input of the model", "age 'old' is not a finite number"):
    assert why in message


def test_predict_on_av_digits_matches_evaluation(av_run, av_model):
  config, workdir = av_run
  probs_KxNxC, source = _evaluated(config, workdir, ('test',),
                                   subdir='best')['test']
  model = av_model
  assert not model.ensemble and model.step == 1
  assert model.module.kernels == kernels.resolve('auto')  # as trained here
  examples = [{m: source[i][m] for m in AV_MODALITIES}
              for i in range(len(source))]
  out = model.predict(examples)
  np.testing.assert_allclose(out.probabilities, probs_KxNxC[0], atol=1e-6)
  assert set(out.labels) <= set(model.classes) and 'seven' in model.classes
  batch = next(pipeline.eval_batches(source, batch_size=len(source),
                                     modalities=AV_MODALITIES))
  np.testing.assert_allclose(model.apply_batch(batch)['probabilities'],
                             probs_KxNxC[0], atol=1e-6)


# A fresh process with JAX alone: it must not need, and so not import, any of
# mmfusion (in particular mmfusion.models, encoders and fusion).
_RELOAD = r'''
import json, sys
import numpy as np
import jax
folder, inputs, expected = sys.argv[1:]
with open(f'{folder}/signature.json') as f:
  signature = json.load(f)
with open(f'{folder}/{signature["file"]}', 'rb') as f:
  exported = jax.export.deserialize(bytearray(f.read()))
inputs, expected = dict(np.load(inputs)), dict(np.load(expected))
assert sorted(inputs) == sorted(signature['inputs'])
for n in (5, 2):  # any batch size
  out = exported.call({k: v[:n] for k, v in inputs.items()})
  assert sorted(out) == sorted(expected) == sorted(signature['outputs'])
  for k, v in out.items():
    np.testing.assert_allclose(np.asarray(v), expected[k][:n], atol=1e-5,
                               rtol=0, err_msg=k)
loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'mmfusion')
assert not loaded, loaded
print('reloaded')
'''


def _cli(module, *args) -> int:
  """Exit status of `python -m mmfusion.<module> args`, run in this process."""
  flags.FLAGS.unparse_flags()
  try:
    module.main(cli.parse_flags(['mmfusion', '--compilation_cache=', *args]))
  except SystemExit as e:
    return e.code
  finally:
    flags.FLAGS.unparse_flags()
  return 0


def test_exported_model_reloads_without_mmfusion(av_run, av_model, tmp_path,
                                                 capsys):
  _, workdir = av_run
  out = tmp_path / 'exported'
  assert _cli(export, f'--workdir={workdir}', f'--out={out}') == 0
  with open(out / 'signature.json') as f:
    signature = json.load(f)
  assert signature['inputs']['image'] == {'shape': ['b', 28, 28, 1],
                                          'dtype': 'uint8'}
  assert signature['outputs']['probabilities']['shape'] == ['b', 10]
  assert signature['classes'][7] == 'seven'
  source = _source(av_run[0], 'test')
  batch = next(pipeline.eval_batches(source, batch_size=5,
                                     modalities=AV_MODALITIES))
  batch['present/audio'][1] = batch['present/image'][2] = False
  inputs = {k: batch[k] for k in signature['inputs']}
  np.savez(tmp_path / 'inputs.npz', **inputs)
  # load's kernels are xla_cpu here, the export's flax.
  np.savez(tmp_path / 'expected.npz', **av_model.apply_batch(inputs))
  proc = subprocess.run(
      [sys.executable, '-c', _RELOAD, str(out), str(tmp_path / 'inputs.npz'),
       str(tmp_path / 'expected.npz')], cwd=tmp_path,
      env=helpers.subprocess_env(1), capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 0 and 'reloaded' in proc.stdout, proc.stderr
  capsys.readouterr()


def _write_input(path, rows, fields=('id', 'image', 'audio', 'text', 'age')):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)


def test_predict_command_writes_every_row(manifest_run, ensemble, tmp_path):
  _, workdir, root, by_id = manifest_run
  rows = [dict(r, image=str(root / r['image']), audio=str(root / r['audio']))
          for r in by_id.values()]  # absolute paths, no label or split
  rows.insert(3, {'id': 'lost', 'image': 'nowhere.npy', 'audio': 'a0.wav',
                  'text': 'x'})  # line 5 of the input
  rows.append({'id': 'only_text', 'text': 'bonjour'})
  _write_input(tmp_path / 'new.csv', rows)
  out, emb = tmp_path / 'preds.jsonl', tmp_path / 'emb.npy'
  proc = subprocess.run(
      [sys.executable, '-m', 'mmfusion.predict', f'--workdir={workdir}',
       f'--input={tmp_path / "new.csv"}', f'--out={out}', '--checkpoint=latest',
       f'--embeddings={emb}', '--skip_bad_rows', '--compilation_cache='],
      cwd=helpers.ROOT, env=helpers.subprocess_env(1), capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert '1 bad row(s)' in proc.stdout and 'Wrote 11 prediction' in proc.stdout
  with open(out) as f:
    written = [json.loads(line) for line in f]
  good = [_inputs(r) for r in rows if r['id'] != 'lost']
  assert [w['id'] for w in written] == [r['id'] for r in good]
  want = ensemble.predict(good)
  got_NxC = [[w['probabilities'][c] for c in ensemble.classes]
             for w in written]
  np.testing.assert_allclose(got_NxC, want.probabilities, atol=1e-6)
  assert [w['prediction'] for w in written] == want.labels
  np.testing.assert_allclose(np.load(emb), want.embeddings['fused'],
                             atol=1e-6)
  with open(predict.report_path(str(out))) as f:
    report = f.read().splitlines()
  assert report[0] == 'line\tid\treason' and len(report) == 2
  assert report[1].startswith("5\tlost\timage 'nowhere.npy': file not found")


def _snapshot(folder):
  out = {}
  for where, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(where, name), 'rb') as f:
        out[os.path.join(where, name)] = hashlib.sha1(f.read()).hexdigest()
  return out


def _bad_inputs(tmp_path, workdir, root):
  """(name, module, flags, words of the error) of each case."""
  np.save(tmp_path / 'big.npy', np.zeros((28, 28), np.uint8))
  _write_input(tmp_path / 'bad.csv', [
      {'id': 'a', 'image': 'big.npy', 'audio': str(root / 'a0.wav')},
      {'id': 'b', 'image': str(root / 'im0.npy'), 'audio': 'gone.wav'},
      {'id': 'c', 'text': 'fine'}])
  with open(tmp_path / 'video.jsonl', 'w') as f:
    f.write(json.dumps({'id': 'v', 'video': [0, 1], 'text': 'hi'}) + '\n')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'taken').mkdir()
  new = tmp_path / 'new.csv'
  _write_input(new, [{'id': 'ok', 'text': 'hello'}])
  io = (f'--input={new}', f'--out={tmp_path / "preds.jsonl"}')
  return [
      ('unknown workdir', predict, ('--workdir=/no/such/run', *io),
       'there is no workdir'),
      ('no checkpoint', predict, (f'--workdir={tmp_path / "empty"}', *io),
       'holds no checkpoint'),
      ('missing step', predict, (f'--workdir={workdir}', *io,
                                 '--checkpoint=7'),
       'no checkpoint of step 7; its steps are 1, 2'),
      ('not a step', predict, (f'--workdir={workdir}', *io,
                               '--checkpoint=newest'),
       'is not best, latest or a step number'),
      ('no such member', predict, (f'--workdir={workdir}', *io,
                                   '--member=2'), 'pass 0 .. 1'),
      ('untrained modality', predict, (
          f'--workdir={workdir}', f'--input={tmp_path / "video.jsonl"}',
          io[1]), 'column(s) video, which the model was not trained on'),
      ('bad rows', predict, (f'--workdir={workdir}',
                             f'--input={tmp_path / "bad.csv"}', io[1]),
       "2 bad row(s): line 2 (image 'big.npy': shape [28, 28, 1] is not "
       "[12, 10, 1]); line 3 (audio 'gone.wav': file not found)"),
      ('export exists', export, (f'--workdir={workdir}',
                                 f'--out={tmp_path / "taken"}'),
       'already exists'),
      ('export no workdir', export, ('--workdir=/no/such/run',
                                     f'--out={tmp_path / "exp"}'),
       'there is no workdir'),
  ]


def test_bad_input_is_one_sentence_and_exit_2(manifest_run, tmp_path,
                                              capsys):
  _, workdir, root, _ = manifest_run
  cases = _bad_inputs(tmp_path, workdir, root)
  before = _snapshot(tmp_path), _snapshot(workdir)
  for name, module, args, words in cases:
    assert _cli(module, *args) == 2, name
    err = capsys.readouterr().err.strip()
    assert err.startswith('mmfusion: error: ') and err.endswith('.'), name
    assert '\n' not in err and words in err, (name, err)
  assert (_snapshot(tmp_path), _snapshot(workdir)) == before  # nothing written
  with pytest.raises(errors.UserError, match='there is no workdir'):
    mmfusion.load('/no/such/run')
  assert inference.locate(workdir, '1') == ('checkpoints', 1)
  assert inference.locate(workdir, 'best') == ('best', 2)


def test_import_mmfusion_is_light_and_exposes_the_api():
  proc = subprocess.run(
      [sys.executable, '-c', 'import sys, mmfusion\n'
       'assert mmfusion.get_config("seed", "runlocal").total_steps == 60\n'
       'heavy = [m for m in ("jax", "flax", "tensorflow_datasets") '
       'if m in sys.modules]\n'
       'assert not heavy, heavy'], cwd=helpers.ROOT,
      env=helpers.subprocess_env(1), capture_output=True, text=True,
      timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert mmfusion.load is inference.load and mmfusion.build_run is build.run
  assert mmfusion.train_and_evaluate is train.train_and_evaluate
  assert {'concat', 'late_logits'} <= set(mmfusion.FUSIONS)
  assert 'mlp' in mmfusion.ENCODERS
  assert mmfusion.get_config('av_digits', 'audio').data.modalities == (
      'audio',)
  with pytest.raises(errors.UserError, match='unknown config'):
    mmfusion.get_config('nope')


def test_a_config_saved_before_data_augment_still_builds(data_dir):
  """Workdirs written before `data.augment` existed load: the key is filled
  with what those runs did (no augmentation)."""
  from mmfusion import build, inference
  config = helpers.tiny_config(data_dir)
  del config.data['augment']
  with pytest.raises(errors.UserError, match='data.augment'):
    build.check_config(config)
  inference.fill_later_keys(config)
  assert config.data.augment.to_dict() == {}
  build.check_config(config)
