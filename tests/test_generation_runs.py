"""Captioning and question answering train from their configs, evaluate by
decoding, and a loaded model's `predict` writes the text evaluation wrote."""

import os

import jax
import numpy as np
import pytest

import mmfusion
from mmfusion import build, checkpoint, cost, evaluate, export, main, train
from mmfusion.configs import av_generation
from mmfusion.data import av_digits
from mmfusion.data import pipeline
from mmfusion.runtime import errors
from tests import helpers
from tests.test_av_text import TINY, TINY_CAPTIONS

RUN = {'num_devices': 1, 'total_steps': 2, 'eval_every': 2,
       'checkpoint_every': 2, 'log_every': 1, 'optimizer.warmup_steps': 1,
       'batch_size': 8, 'task.width': 16}


def _config(arg, data_dir, overrides):
  """The config of `arg`, its encoders shrunk, two steps on a tiny build."""
  config = av_generation.get_config(arg)
  config.data.data_dir = data_dir
  config.data.overrides = dict(overrides)
  for options in config.model.encoders.values():
    options['features'] = 8
    if 'channels' in options:
      options['channels'] = (4,)
  config.model.encoders.video.frame_options = {'channels': (4,), 'pool': True}
  config.model.encoders.audio.n_mels = 8
  config.update_from_flattened_dict(RUN)
  return config


@pytest.fixture(scope='module')
def captions_run(tmp_path_factory, data_dir):
  config = _config('captions', data_dir, TINY_CAPTIONS)
  workdir = str(tmp_path_factory.mktemp('captions_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _evaluated_texts(config, workdir, split):
  """The texts evaluation decodes for `split` at the best checkpoint."""
  run = build.run(config)
  ckpt = checkpoint.Checkpointer(workdir, subdir='best')
  state, _ = ckpt.restore(ckpt.latest_step(), run.sharded_abstract_state())
  ckpt.close()
  fn = jax.jit(evaluate.eval_fn(run.model, run.task, run.members))
  source = run.builder.as_data_source(split=split)
  out = evaluate.predictions(fn, state.params, source, config, run.mesh,
                             run.task)[0]
  return run.task.texts(out['tokens'], out['start']), source


def test_captioning_trains_and_predict_writes_what_evaluation_decoded(
    captions_run):
  config, workdir = captions_run
  results = helpers.read_metrics(workdir, 'test')[-1]
  for key in ('cider_d', 'bleu4', 'exact_match', 'wer', 'loss',
              'cider_d/video', 'exact_match/audio'):
    assert key in results, key
  texts, source = _evaluated_texts(config, workdir, 'test')
  model = mmfusion.load(workdir)
  tags = [model.data.text_tokenizer('prompt').decode(source[i]['prompt'][None])
          [0] for i in range(len(source))]
  assert set(tags) <= {f'<{lang}>' for lang in av_digits.WORDS}
  examples = [{'video': source[i]['video'], 'audio': source[i]['audio'],
               'prompt': tags[i], 'id': f'clip{i}'}
              for i in range(len(source))]
  out = model.predict(examples)
  rows = out.rows()
  assert [r['prediction'] for r in rows] == texts
  assert rows[0]['id'] == 'clip0' and isinstance(rows[0]['prediction'], str)
  assert out.embeddings['fused'].shape[0] == len(source)


def test_decoding_on_the_eight_device_mesh_writes_the_one_device_texts(
    captions_run):
  config, workdir = captions_run
  one, _ = _evaluated_texts(config, workdir, 'validation')
  eight = config.copy_and_resolve_references()
  eight.num_devices = 8
  assert _evaluated_texts(eight, workdir, 'validation')[0] == one
  assert len(jax.devices()) == 8


def test_the_exported_decoder_writes_the_tokens_at_any_batch_size(
    captions_run):
  """The StableHLO artifact decodes in one while_loop, batch-polymorphic."""
  config, workdir = captions_run
  model = mmfusion.load(workdir)
  source = pipeline.get_builder(config.data).as_data_source(split='test')
  batch = next(pipeline.eval_batches(source, batch_size=5,
                                     modalities=config.data.modalities,
                                     targets=('prompt',)))
  batch = {k: v for k, v in batch.items() if k in model.input_spec(1)}
  expected = model.apply_batch(batch)['tokens']
  exported = jax.export.deserialize(export.export_model(model).serialize())
  for n in (5, 3):
    out = exported.call({k: v[:n] for k, v in batch.items()})
    np.testing.assert_array_equal(out['tokens'], expected[:n])


def test_scores_by_feature_add_up_to_the_runs_score(captions_run):
  """experiments.report.by_feature: per language, and over all of them the
  metric evaluation reported."""
  from experiments.report import by_feature
  config, workdir = captions_run
  text = by_feature.table([('run', workdir)], 'language', 'test',
                          'cider_d', ['audio+video'])
  head, _, row = text.strip().splitlines()
  assert '| en |' in head and '| fr |' in head
  reported = helpers.read_metrics(workdir, 'test')[-1]['cider_d']
  assert abs(float(row.split(' | ')[-1].rstrip(' |')) - reported) < 5e-4


def test_a_generation_config_is_costed_with_its_decoder(captions_run):
  """`mmfusion.cost` reads the decoder's width (the vocabulary with BOS and
  EOS) and compiles the teacher-forced train step."""
  config, _ = captions_run
  report = cost.report(config, batch_size=4)
  width = build.run(config).data.text_tokenizer().vocab_size + 2
  assert report['task'] == 'generation' and report['metric'] == 'cider_d'
  assert report['num_outputs'] == width
  assert report['params']['decoder'] > 0
  assert report['train_step']['flops'] > 0 and report['forward']['flops'] > 0


def test_a_prompt_the_vocabulary_lacks_is_one_sentence(captions_run):
  model = mmfusion.load(captions_run[1])
  example = {'video': np.zeros((9, 32, 32, 1), np.uint8),
             'audio': np.zeros(36_000, np.float32), 'prompt': '<xx>'}
  with pytest.raises(errors.UserError, match='has a token the vocabulary '
                     'lacks'):
    model.predict([example])
  batch = {'video': example['video'][None], 'audio': example['audio'][None]}
  with pytest.raises(errors.UserError, match="has no 'prompt', but the model "
                     r"takes it as int32\['B', \d+\]; pass it"):
    model.apply_batch(batch)
  with pytest.raises(errors.UserError, match='no mean text'):
    mmfusion.load(captions_run[1]).task.mean_outputs({})


def test_question_answering_trains_on_seen_and_held_out_templates(
    tmp_path, data_dir):
  config = _config('qa', data_dir, TINY)
  train.train_and_evaluate(config, str(tmp_path))
  seen = helpers.read_metrics(str(tmp_path), 'test_seen')[-1]
  held_out = helpers.read_metrics(str(tmp_path), 'test')[-1]
  for results in (seen, held_out):
    assert 0 <= results['exact_match'] <= 1
    assert 'exact_match/audio+text' in results
  builder = pipeline.get_builder(config.data)
  assert len(builder.as_data_source(split='test')) == held_out['examples']


@pytest.mark.parametrize('setting,says', [
    ('seed', 'has no `caption`'),  # a dataset with no text target
    ('task.beam_size=0', 'task.beam_size=0 must be at least 1'),
    ('task.max_length=2', 'task.max_length=2 is not longer than BOS'),
    ('model.fusion=late_logits', 'a text decoder does not make'),
])
def test_bad_generation_settings_exit_2_in_one_sentence(
    setting, says, tmp_path, data_dir, capsys):
  if setting == 'seed':
    config = helpers.tiny_config(data_dir)
    config.task = {'name': 'generation'}
    config.best_metric = 'cider_d'
  else:
    config = _config('captions', data_dir, TINY_CAPTIONS)
    key, value = setting.split('=')
    config.update_from_flattened_dict({key: int(value) if value.isdigit()
                                       else value})
  workdir = str(tmp_path / 'run')
  with pytest.raises(SystemExit) as e:
    main.train(config, workdir)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1, err
  assert err.startswith('mmfusion: error: ') and says in err, err
  assert not os.path.exists(workdir)
