"""The Flax ViT and CLIP ports against PyTorch: tiny random `ViTModel`,
`ViTForImageClassification` and `CLIPModel` checkpoints give the same states,
pooled outputs, CLIP embeddings and logits; bad checkpoints fail in one
sentence.

Pixels: the Flax encoders take [0, 1] images and normalise them inside with
the checkpoint's mean/std; PyTorch gets the same images normalised here in
numpy, with the same statistics (images are already `image_size`, so neither
side resizes)."""

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

from mmfusion.encoders import clip_text
from mmfusion.encoders import hf_vit as hf_vit_lib
from mmfusion.pretrained import clip
from mmfusion.pretrained import hf_vit
from mmfusion.runtime import errors

# The reference frameworks (PyTorch, transformers, onnxruntime) and full-size
# pretrained models: the slow tier (make test-slow, run by CI).
pytestmark = pytest.mark.slow

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, image_size=16, patch_size=8)
# The image tower is wider than the text tower, so a transposed projection
# or a swapped tower cannot pass.
CLIP_VISION = VIT | dict(hidden_size=48)
BOS, EOS = 98, 99  # the largest id is <|endoftext|>, as in CLIP's vocabulary
CLIP_TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=24, bos_token_id=BOS,
                 eos_token_id=EOS, pad_token_id=1)
LENGTH = 12
ATOL = 1e-4


def _perturbed(model):
  """`model` with weights off their init, so LayerNorm scale and bias differ."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """{kind: (folder, PyTorch model)} of tiny random checkpoints: ViT saved as
  an image classifier (`vit.` prefix, `classifier.*`) and as a `ViTModel`
  (with its pooler), and a `CLIPModel`."""
  torch.manual_seed(0)
  vit_config = transformers.ViTConfig(**VIT)
  models = {
      'vit_cls': transformers.ViTForImageClassification(vit_config),
      'vit': transformers.ViTModel(vit_config),
      'clip': transformers.CLIPModel(transformers.CLIPConfig(
          text_config=CLIP_TEXT, vision_config=CLIP_VISION,
          projection_dim=24)),
  }
  out = {}
  for kind, model in models.items():
    path = tmp_path_factory.mktemp(kind)
    _perturbed(model).save_pretrained(path)
    out[kind] = (str(path), model)
  return out


def _images(n=2):
  """[n, 16, 16, 3] float pixels in [0, 1], at the checkpoints' image size."""
  return np.random.default_rng(0).uniform(size=(n, 16, 16, 3)).astype(
      np.float32)


def _pixels(images_BxHxWxC, mean, std):
  """What the HF image processor would hand PyTorch: normalised, NCHW."""
  x = (images_BxHxWxC - np.asarray(mean)) / np.asarray(std)
  return torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)


def _ids():
  """[4, 12] CLIP-like rows: full; padded with <|endoftext|>; padded with 0
  ("!", as some tokenizers pad); cut from inside a text (no start or end of
  text, its largest id not first)."""
  rng = np.random.default_rng(1)
  ids_BxL = rng.integers(3, BOS - 1, (4, LENGTH))
  ids_BxL[:3, 0] = BOS
  ids_BxL[3, 5] = BOS - 1
  for row, n, pad in ((0, 11, EOS), (1, 6, EOS), (2, 4, 0)):
    ids_BxL[row, n] = EOS
    ids_BxL[row, n + 1:] = pad
  return ids_BxL.astype(np.int32)


def _real(ids_BxL):
  """HF's attention mask for `_ids`, written out: up to the first EOS."""
  mask_BxL = np.ones(ids_BxL.shape, bool)
  for row, ids in enumerate(ids_BxL):
    if (ids == EOS).any():
      mask_BxL[row, np.argmax(ids == EOS) + 1:] = False
  return mask_BxL


def _template(module, x):
  return jax.eval_shape(module.init, jax.random.key(0), x)['params']


def _diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_vit_matches_pytorch(tiny):
  """Classifier checkpoint: every token; `ViTModel` checkpoint under a new
  projection to 16 features: the same tokens, projected."""
  images = _images()
  (cls_path, cls_model), (path, torch_vit) = tiny['vit_cls'], tiny['vit']
  opts = hf_vit.options(cls_path)
  assert opts['mean'] == hf_vit_lib.VIT_MEAN and not opts['pre_norm']
  with torch.no_grad():
    pixels = _pixels(images, opts['mean'], opts['std'])
    want = cls_model.vit(pixels).last_hidden_state.numpy()
    want_model = torch_vit(pixels).last_hidden_state.numpy()
  model = hf_vit_lib.HfViT(features=32, **opts)
  params = hf_vit.load(cls_path, _template(model, images))
  rng = np.random.default_rng(2)
  proj = {'kernel': rng.normal(size=(32, 16)).astype(np.float32),
          'bias': rng.normal(size=16).astype(np.float32)}
  projected = model.clone(features=16)
  proj_params = hf_vit.load(path, _template(projected, images) | {
      'proj': proj})
  np.testing.assert_array_equal(proj_params['proj']['kernel'], proj['kernel'])
  (tokens, mask), (proj_tokens, _) = jax.jit(lambda: (
      model.apply({'params': params}, images),
      projected.apply({'params': proj_params}, images)))()
  assert tokens.shape == (2, 5, 32) and proj_tokens.shape == (2, 5, 16)
  assert np.asarray(mask).all()
  diff = _diff(tokens, want)
  proj_diff = _diff(proj_tokens, want_model @ proj['kernel'] + proj['bias'])
  print(f'ViT max abs diff: tokens {diff:.2e}, projected {proj_diff:.2e}')
  assert diff < ATOL and proj_diff < ATOL, (diff, proj_diff)


def _padded(ids_BxL, more=8):
  """[7, 20]: every row of `ids` with `more` 0s (the pad id the port is given
  below), then rows 0-2 again with `more` <|endoftext|>s (row 3 has no end of
  text, which EOS-padding would add)."""
  pad = lambda rows, v: np.pad(rows, ((0, 0), (0, more)), constant_values=v)
  return np.concatenate([pad(ids_BxL, 0), pad(ids_BxL[:3], EOS)])


@pytest.fixture(scope='module')
def clip_flax(tiny):
  """The Flax CLIP towers on `_images()` and on `_padded(_ids())`, one jit:
  {towers, image tokens, text tokens, text mask, pooled text, pooled text
  by the legacy 'max_id' rule}."""
  path = tiny['clip'][0]
  towers = clip.towers(path)
  image = hf_vit_lib.HfViT(features=48, **hf_vit.options(path))
  text = clip_text.ClipText(features=32, pad_id=0, **clip.options(path))
  text_in = lambda m: m.apply({'params': towers['text']}, _padded(_ids()))
  out = jax.jit(lambda: dict(
      image=image.apply({'params': towers['vision']}, _images())[0],
      text=text_in(text),
      pooled=text_in(text.clone(pool=True)),
      max_id=text_in(text.clone(pool=True, eos_rule='max_id'))))()
  for name in ('pooled', 'max_id'):
    pooled, mask = out[name]
    assert pooled.shape == (7, 1, 32) and np.asarray(mask).all()
    out[name] = np.asarray(pooled[:, 0])
  out['text'], out['mask'] = (np.asarray(x) for x in out['text'])
  return out | {'towers': towers, 'image': np.asarray(out['image'])}


def test_clip_matches_pytorch(tiny, clip_flax):
  """PyTorch sees the unpadded ids with HF's attention mask; the port sees
  them with 8 more padding tokens (`_padded`), which must change nothing."""
  path, model = tiny['clip']
  images, ids_BxL = _images(), _ids()
  v_opts, t_opts = hf_vit.options(path), clip.options(path)
  assert v_opts['pre_norm'] and v_opts['mean'] == hf_vit_lib.CLIP_MEAN
  assert t_opts['eos_id'] == EOS and t_opts['eos_rule'] == 'first_eos'
  defaults = hf_vit_lib.ClipVision(features=1)  # the same CLIP switches
  assert all(getattr(defaults, k) == v_opts[k] for k in (
      'layer_norm_eps', 'activation', 'pre_norm', 'patch_bias', 'mean', 'std',
      'resize')), v_opts
  with torch.no_grad():
    pixels = _pixels(images, v_opts['mean'], v_opts['std'])
    ids, real = torch.tensor(ids_BxL, dtype=torch.long), torch.tensor(
        _real(ids_BxL))
    vision = model.vision_model(pixel_values=pixels)
    want_image = model.vision_model.post_layernorm(
        vision.last_hidden_state).numpy()
    text_out = model.text_model(input_ids=ids, attention_mask=real)
    out = model(input_ids=ids, attention_mask=real, pixel_values=pixels)
  towers, image_tokens = clip_flax['towers'], clip_flax['image']
  mask, real = clip_flax['mask'][:4], _real(ids_BxL)
  np.testing.assert_array_equal(mask[:, :LENGTH], real)
  assert not mask[:, LENGTH:].any()
  text_tokens = clip_flax['text'][:4, :LENGTH]
  pooled = clip_flax['pooled'][:4]

  normed = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image_embeds = normed(image_tokens[:, 0] @ towers['visual_projection'])
  text_embeds = normed(pooled @ towers['text_projection'])
  logits = np.exp(towers['logit_scale']) * image_embeds @ text_embeds.T
  diffs = {
      'image tokens': _diff(image_tokens, want_image),
      'image pooled': _diff(image_tokens[:, 0], vision.pooler_output),
      'text tokens': _diff(text_tokens[real],
                           text_out.last_hidden_state.numpy()[real]),
      'text pooled': _diff(pooled, text_out.pooler_output),
      'image embeds': _diff(image_embeds, out.image_embeds),
      'text embeds': _diff(text_embeds, out.text_embeds),
      'logits_per_image': _diff(logits, out.logits_per_image),
  }
  print('CLIP max abs diff: ' + ', '.join(
      f'{k} {v:.2e}' for k, v in diffs.items()))
  assert max(diffs.values()) < ATOL, diffs


def test_clip_text_padding_does_not_change_real_tokens(clip_flax):
  """Padding with <|endoftext|> or with 0 after the end of text gives the
  same mask, real tokens and pooled state (and the mask ends at the first
  end of text, whatever the pad id)."""
  tokens, mask, pooled = (clip_flax[k] for k in ('text', 'mask', 'pooled'))
  np.testing.assert_array_equal(mask[4:], mask[:3])
  real = mask[:3]
  assert _diff(tokens[4:][real], tokens[:3][real]) < 1e-6
  assert _diff(pooled[4:], pooled[:3]) < 1e-6


def test_clip_legacy_eos_pools_at_the_largest_id(tiny, clip_flax, tmp_path):
  """Configs with eos_token_id=2 pool at argmax(ids), as HF does; row 3,
  which holds no end of text, tells the two rules apart."""
  path, model = tiny['clip']
  legacy = shutil.copytree(path, tmp_path / 'legacy')
  config = json.loads((legacy / 'config.json').read_text())
  config['text_config']['eos_token_id'] = 2
  (legacy / 'config.json').write_text(json.dumps(config))
  opts = clip.options(str(legacy))
  assert opts['eos_rule'] == 'max_id' and opts['eos_id'] == EOS
  ids_BxL = _ids()
  text_model = model.text_model
  try:
    text_model.eos_token_id = 2
    with torch.no_grad():
      want = text_model(input_ids=torch.tensor(ids_BxL, dtype=torch.long),
                        attention_mask=torch.tensor(_real(ids_BxL))
                        ).pooler_output.numpy()
  finally:
    text_model.eos_token_id = EOS
  assert np.argmax(ids_BxL[3]) != 0  # the rules differ on this row
  max_id = clip_flax['max_id']
  assert _diff(max_id[:4], want) < ATOL
  assert _diff(max_id[3], clip_flax['pooled'][3]) > 0.1


def test_renamed_and_removed_tensors_are_named(tiny, tmp_path):
  path = shutil.copytree(tiny['vit_cls'][0], tmp_path / 'copy')
  file = path / 'model.safetensors'
  hf = safetensors_np.load_file(file)
  del hf['vit.encoder.layer.1.output.dense.bias']
  hf['vit.encoder.layer.0.intermediate.dense.weights'] = hf.pop(
      'vit.encoder.layer.0.intermediate.dense.weight')
  safetensors_np.save_file(hf, file)
  model = hf_vit_lib.HfViT(features=32, **hf_vit.options(path))
  with pytest.raises(errors.UserError) as e:
    hf_vit.load(str(path), _template(model, _images(1)))
  message = str(e.value)
  assert 'lacks 2 tensors' in message and 'has 1 the model does not use' in (
      message), message
  for name in ('layer_1/mlp_out/bias', 'layer_0/mlp_in/kernel',
               'layer_0/mlp_in/weights'):
    assert name in message, message

  path = shutil.copytree(tiny['clip'][0], tmp_path / 'clip')
  file = path / 'model.safetensors'
  hf = safetensors_np.load_file(file)
  del hf['text_projection.weight']
  hf['text_model.final_layer_norm.gamma'] = hf.pop(
      'text_model.final_layer_norm.weight')
  safetensors_np.save_file(hf, file)
  with pytest.raises(errors.UserError, match='lacks text_projection.weight'):
    clip.towers(str(path))
  text = clip_text.ClipText(features=32, **clip.options(path))
  with pytest.raises(errors.UserError,
                     match='final_ln/scale.*final_ln/gamma'):
    clip.load(str(path), _template(text, _ids()))


def test_other_sizes_are_a_shape_error(tiny):
  path = tiny['clip'][0]
  text = clip_text.ClipText(features=32, **clip.options(path) | {'mlp_dim': 48})
  with pytest.raises(errors.UserError, match='other shapes.*mlp_in'):
    clip.load(path, _template(text, _ids()))


def test_unsupported_checkpoints_are_refused(tiny, tmp_path):
  with pytest.raises(errors.UserError, match='does not exist'):
    hf_vit.options(str(tmp_path / 'nope'))
  with pytest.raises(errors.UserError, match="'vit' model.*CLIP text"):
    clip.options(tiny['vit'][0])
  path = shutil.copytree(tiny['clip'][0], tmp_path / 'copy')
  config = json.loads((path / 'config.json').read_text())
  bad_act = config | {'vision_config': config['vision_config'] | {
      'hidden_act': 'relu'}}
  for change, load, words in (
      ({'model_type': 'gpt2'}, hf_vit.options, "'gpt2' model"),
      ({'model_type': 'gpt2'}, clip.options, "'gpt2' model"),
      (bad_act, hf_vit.options, "hidden_act='relu'")):
    (path / 'config.json').write_text(json.dumps(config | change))
    with pytest.raises(errors.UserError, match=words):
      load(str(path))
  (path / 'model.safetensors').unlink()
  with pytest.raises(errors.UserError, match='lacks model.safetensors'):
    clip.tensors(str(path))


def test_preprocessor_config_sets_the_normalisation(tiny, tmp_path):
  path = shutil.copytree(tiny['vit'][0], tmp_path / 'copy')
  (path / 'preprocessor_config.json').write_text(json.dumps(
      {'image_mean': [0.4, 0.5, 0.6], 'image_std': [0.2, 0.3, 0.4],
       'resample': 3}))
  opts = hf_vit.options(str(path))
  assert (opts['mean'], opts['std'], opts['resize']) == (
      (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), 'bicubic')


def test_bfloat16_compute_on_float32_weights(tiny):
  """One layer of each tower: bf16 compute on f32 parameters under jit
  (forward mode and second derivatives: tests/test_kernels.py's sweep). The
  image input is uint8 greyscale at another size, so the module converts
  and resizes it."""
  images = np.random.default_rng(3).integers(0, 256, (2, 24, 24, 1),
                                             dtype=np.uint8)
  towers = []
  for path, lib, cls, x in (
      (tiny['vit_cls'][0], hf_vit, hf_vit_lib.HfViT, images),
      (tiny['clip'][0], clip, clip_text.ClipText, _ids())):
    model = cls(features=32, **lib.options(path) | {'num_layers': 1})
    params = lib.load(path, _template(model.clone(num_layers=2), x))
    del params['layer_1']
    towers.append((model, params, x))

  def run():
    return [(model.clone(dtype=jnp.bfloat16).apply({'params': params}, x)[0],
             model.apply({'params': params}, x)[0])
            for model, params, x in towers]

  for (half, tokens), (_, params, _) in zip(jax.jit(run)(), towers):
    assert half.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    np.testing.assert_allclose(half.astype(np.float32), tokens, atol=0.15)
