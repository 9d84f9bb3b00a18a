"""How an encoder trains: frozen, fine-tuned at its own rate, loaded from a
checkpoint at init (mmfusion.pretrained, build.make_optimizer)."""

import functools
import re

import jax
import numpy as np
import pytest

from mmfusion import build, models, pretrained, train
from mmfusion.configs import av_digits
from mmfusion.data import pipeline
from mmfusion.pretrained import speech_embedding
from mmfusion.runtime import errors
from tests import helpers
from tests.test_av_digits import TINY as TINY_AV_DATA


def _run(data_dir, **image_options):
  config = helpers.tiny_config(data_dir)
  config.model.encoders.image.update(image_options)
  return build.run(config)


def _one_step(run, state):
  pipeline.prepare(run.builder)
  batch = next(pipeline.eval_batches(
      run.builder.as_data_source('train'), batch_size=run.config.batch_size,
      modalities=run.config.data.modalities, targets=run.task.TARGETS))
  batch = {k: batch[k] for k in run.batch_spec()}
  step = jax.jit(functools.partial(train.train_step, model=run.model,
                                   task=run.task, tx=run.tx))
  state, _ = step(state, batch)  # step 0: warmup starts at a rate of 0
  return step(state, batch)


def _bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def test_a_frozen_encoder_gets_no_update_and_no_optimizer_state(data_dir):
  full, frozen = _run(data_dir), _run(data_dir, finetune='frozen')
  state_full, state = full.init_state(), frozen.init_state()
  encoder = state.params['encoder_image']
  # Adam keeps two moments per trainable parameter; none for the encoder's.
  assert (_bytes(state_full.opt_state) - _bytes(state.opt_state) ==
          2 * _bytes(encoder))
  after, metrics = _one_step(frozen, state)
  assert float(metrics['loss']) > 0
  for a, b in zip(jax.tree.leaves(encoder),
                  jax.tree.leaves(after.params['encoder_image'])):
    np.testing.assert_array_equal(a, b)
  for name in ('encoder_text', 'head'):
    moved = [np.any(a != b) for a, b in zip(
        jax.tree.leaves(state.params[name]),
        jax.tree.leaves(after.params[name]))]
    assert all(moved), name


def test_lr_scale_scales_only_its_encoders_updates(data_dir):
  deltas = []
  for run in (_run(data_dir), _run(data_dir, lr_scale=0.25)):
    state = run.init_state()  # the same parameters: the same seed
    after, _ = _one_step(run, state)
    deltas.append(jax.tree.map(lambda a, b: np.asarray(b - a),
                               state.params, after.params))
  for name, ratio in (('encoder_image', 0.25), ('encoder_text', 1.0),
                      ('head', 1.0)):
    for one, scaled in zip(jax.tree.leaves(deltas[0][name]),
                           jax.tree.leaves(deltas[1][name])):
      assert np.any(one != 0)
      np.testing.assert_allclose(scaled, ratio * one, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_is_loaded_at_init_and_frozen_keeps_proj_trainable(
    data_dir):
  config = av_digits.get_config('audio,runlocal,pretrained=audio,'
                                'finetune=frozen')
  config.data.data_dir = data_dir
  config.data.overrides = TINY_AV_DATA
  config.batch_size = 8
  run = build.run(config)
  state = run.init_state()
  params = state.params['encoder_audio']
  packaged = speech_embedding.tensors('speech-embedding')
  for name, leaf in pretrained.weights.flat_names(params).items():
    if name.startswith('proj/'):
      continue
    np.testing.assert_array_equal(leaf, packaged[name])
  labels = pretrained.labels(state.params, config.model.encoders)
  assert set(jax.tree.leaves(labels['encoder_audio']['net'])) == {'frozen'}
  assert set(jax.tree.leaves(labels['encoder_audio']['proj'])) == {'train'}


@pytest.mark.parametrize('options, message', [
    ({'finetune': 'thaw'}, "unknown model.encoders.image.finetune 'thaw'"),
    ({'lr_scale': 0.0},
     'model.encoders.image.lr_scale=0.0 must be a positive number'),
    ({'checkpoint': 'my-weights'},
     "encoder 'mlp' has no pretrained weights to load; set a checkpoint "
     'only on bert, clip_text, clip_vision, efficientnet_lite, hf_vit, '
     'speech_embedding, whisper.'),
])
def test_bad_run_options_of_an_encoder_are_one_sentence(data_dir, options,
                                                        message):
  with pytest.raises(errors.UserError, match='^' + re.escape(message)):
    _run(data_dir, **options)


def test_an_option_that_disagrees_with_the_checkpoint_is_one_sentence():
  options = {'name': 'efficientnet_lite', 'features': 8, 'width': 1.2,
             'checkpoint': 'efficientnet-lite0'}
  with pytest.raises(errors.UserError, match=(
      r"^encoder 'efficientnet_lite' option width=1.2 disagrees with its "
      r"checkpoint 'efficientnet-lite0' \(width=1.0\)")):
    pretrained.module_options(options)


def _text_model(**run_options):
  text = {'name': 'bert', 'features': 8, 'vocab_size': 16, 'hidden_size': 8,
          'num_layers': 2, 'num_heads': 2, 'mlp_dim': 16, 'max_len': 8,
          **run_options}
  return models.MultimodalModel(encoders={'text': text}, fusion='concat',
                                num_outputs=3)


def test_lora_starts_at_the_frozen_function_and_trains_only_its_factors():
  ids = {'text': np.array([[5, 7, 9, 3], [4, 8, 0, 0]], np.int32)}
  model = _text_model(finetune='lora', lora_rank=2)
  plain_model = _text_model()

  @jax.jit  # one program: init, both models, the gradient, a moved B
  def run(ids):
    params = model.init(jax.random.key(0), ids)['params']
    plain = {k: v for k, v in params.items() if k != 'lora_text'}
    loss = lambda p: model.apply({'params': p}, ids)[0].sum()
    grads = jax.grad(loss)(params)
    moved = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return (params, grads, model.apply({'params': params}, ids)[0],
            plain_model.apply({'params': plain}, ids)[0],
            model.apply({'params': moved}, ids)[0])

  params, grads, out, want, moved = run(ids)
  # q, k, v and out of each of the 2 layers, rank 2.
  factors = params['lora_text']
  assert len(factors) == 8
  assert factors['layer_0.attention.query.kernel']['a'].shape == (8, 2)
  assert factors['layer_1.attention.out.kernel']['b'].shape == (2, 8)
  np.testing.assert_array_equal(out, want)  # B starts at zero
  assert not any(np.any(g) for g in jax.tree.leaves(grads['encoder_text']))
  assert all(np.any(f['b']) for f in grads['lora_text'].values())
  labels = pretrained.labels(params, {'text': model.encoders['text']})
  assert set(jax.tree.leaves(labels['encoder_text'])) == {'frozen'}
  assert set(jax.tree.leaves(labels['lora_text'])) == {'train'}
  assert not np.allclose(moved, out)  # once B has moved, LoRA acts


def test_lora_on_an_encoder_without_attention_is_one_sentence():
  model = models.MultimodalModel(
      encoders={'image': {'name': 'cnn', 'features': 8, 'channels': (4,),
                          'finetune': 'lora'}},
      fusion='concat', num_outputs=3)
  with pytest.raises(errors.UserError, match=(
      "^encoder 'cnn' has no attention projections for LoRA; use "
      'finetune=frozen or full for it.')):
    jax.eval_shape(model.init, jax.random.key(0),
                   {'image': np.zeros((1, 8, 8, 1), np.uint8)})


def test_layer_decay_scales_each_layer_by_its_depth():
  model = _text_model()  # 2 layers
  ids = {'text': np.array([[5, 7, 9, 3]], np.int32)}
  params = jax.eval_shape(model.init, jax.random.key(0), ids)['params']
  cfg = {**model.encoders['text'], 'lr_scale': 0.5, 'layer_decay': 0.8}
  factors = pretrained.lr_factors(params, {'text': cfg})
  enc = factors['encoder_text']
  assert enc['layer_1']['output']['kernel'] == 0.5
  assert enc['layer_0']['attention']['query']['kernel'] == pytest.approx(0.4)
  assert enc['word_embeddings']['embedding'] == pytest.approx(0.5 * 0.64)
  assert factors['head']['Dense_0']['kernel'] == 1.0  # not the encoder's
  with pytest.raises(errors.UserError, match=r'layer_decay=1.5 must be in'):
    pretrained.check('model.encoders.text', {**cfg, 'layer_decay': 1.5})


@pytest.mark.slow  # the three packaged encoders, trained through the loop
@pytest.mark.parametrize('modes', [
    {'audio': 'frozen', 'image': 'full', 'text': 'lora'},
    {'audio': 'full', 'image': 'frozen', 'text': 'frozen'}])
def test_packaged_encoders_train_in_av_digits_in_every_mode(modes, data_dir,
                                                            tmp_path):
  """Every fine-tuning mode of each packaged encoder, end to end: trained,
  evaluated, checkpointed and loaded back; a frozen encoder still holds its
  package's weights after training."""
  import mmfusion
  from mmfusion.pretrained import bert, efficientnet
  config = av_digits.get_config('runlocal,pretrained=image+audio+text')
  config.data.data_dir = data_dir
  config.data.overrides = {**TINY_AV_DATA, 'text_tokenizer': 'all-MiniLM-L6-v2'}
  config.batch_size, config.total_steps = 8, 4
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  config.model.encoders.image.image_size = 32  # the weights fit any size
  for m, mode in modes.items():
    config.model.encoders[m].finetune = mode
    if mode == 'lora':
      config.model.encoders[m].lora_rank = 4
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['step'] == 4 and np.isfinite(results['test']['loss'])
  params = mmfusion.load(workdir).params
  assert ('lora_text' in params) == (modes['text'] == 'lora')
  packaged = {'audio': speech_embedding.tensors('speech-embedding'),
              'image': efficientnet.tensors('efficientnet-lite0'),
              'text': bert.tensors('all-MiniLM-L6-v2')}
  for m, mode in modes.items():
    flat = pretrained.weights.flat_names(params[f'encoder_{m}'])
    same = [np.array_equal(leaf, packaged[m][name])
            for name, leaf in flat.items() if name in packaged[m]]
    assert same and all(same) == (mode != 'full'), m
