"""CLIP checkpoints -> `encoders.clip_text.ClipText` parameters, and both
towers with their projections, offline.

A checkpoint is a folder as Hugging Face's `save_pretrained` writes it
(`config.json`, `model.safetensors`) of a `CLIPModel` (model_type 'clip';
`text_model.*`, `vision_model.*`, the two projections, `logit_scale`) or,
for the text tower alone, of a `CLIPTextModel` /
`CLIPTextModelWithProjection` ('clip_text_model'). Nothing is ever
downloaded. `options`, `tensors` and `load` are the text tower's (the loader
of a CLIP text encoder); the image tower's are `pretrained.hf_vit`'s, which
read the same folder. `towers` reads a whole `CLIPModel`, so a contrastive
task can start from it.

Pooling follows HF 5.23: at the first `eos_token_id` (`eos_rule=
'first_eos'`), except for configs whose `eos_token_id` is 2, the original
OpenAI conversions, where HF pools at the largest id (`eos_rule='max_id'`);
their <|endoftext|> is the last id of the vocabulary, so `eos_id` is
`vocab_size - 1` there. `pad_id` is not read: the configs' `pad_token_id`
(1) is not the id CLIP's tokenizers pad with (<|endoftext|>, or 0 for "!"),
and rows that hold `eos_id` do not need it (`encoders.clip_text`).
Legend: E hidden width, P projection width.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from mmfusion.encoders import clip_text
from mmfusion.encoders import hf_vit as hf_vit_lib
from mmfusion.pretrained import hf_vit
from mmfusion.pretrained import weights
from mmfusion.runtime import errors

folder = hf_vit.folder
MODEL_TYPES = ('clip', 'clip_text_model')
LEGACY_EOS = 2  # the eos_token_id of configs HF pools by the largest id
# config.json (text_config) key -> `ClipText` option.
_OPTIONS = {'vocab_size': 'vocab_size', 'hidden_size': 'hidden_size',
            'num_hidden_layers': 'num_layers',
            'num_attention_heads': 'num_heads',
            'intermediate_size': 'mlp_dim',
            'max_position_embeddings': 'max_len'}
_DEFAULTS = dict(hidden_act='quick_gelu', layer_norm_eps=1e-5,
                 eos_token_id=49407)  # CLIPTextConfig's, for absent keys
_PREFIX = 'text_model.'
# Tensors a text encoder does not use: the image tower, the projections
# (`towers` reads those) and position-id buffers.
_IGNORED = re.compile(r'(vision_model\.|visual_projection\.'
                      r'|text_projection\.|logit_scale$|.*position_ids$)')
_RENAMES = hf_vit.CLIP_LAYER_RENAMES + (
    (r'embeddings\.token_embedding\.weight$', 'token_embedding/embedding'),
    (r'embeddings\.position_embedding\.weight$',
     'position_embedding/embedding'),
    (r'final_layer_norm\.', 'final_ln/'),
)


def options(checkpoint: str) -> dict:
  """The `ClipText` options (sizes, activation, end-of-text pooling) of the
  checkpoint's text tower."""
  model_type, cfg = hf_vit.config(checkpoint, MODEL_TYPES,
                                  'the CLIP text port')
  path = folder(checkpoint) / 'config.json'
  if model_type == 'clip':
    cfg, path = cfg.get('text_config') or {}, f'{path} (text_config)'
  out = hf_vit.sizes(path, cfg, _OPTIONS, _DEFAULTS)
  eos = cfg.get('eos_token_id', _DEFAULTS['eos_token_id'])
  if eos == LEGACY_EOS:
    return out | {'eos_id': out['vocab_size'] - 1, 'eos_rule': 'max_id'}
  return out | {'eos_id': eos, 'eos_rule': 'first_eos'}


def tensors(checkpoint: str, raw: dict | None = None
            ) -> dict[str, np.ndarray]:
  """`model.safetensors` (or `raw`, its tensors when already read) under the
  flat parameter names of `ClipText`."""
  num_heads = options(checkpoint)['num_heads']
  out = {}
  for name, x in (hf_vit.read(checkpoint) if raw is None else raw).items():
    name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    if not _IGNORED.match(name):
      new, x = hf_vit.to_flax(name, x, _RENAMES, num_heads)
      out[new] = x
  return out


def load(checkpoint: str, template, raw: dict | None = None):
  """`template` (the `ClipText` parameters: arrays, or ShapeDtypeStructs
  when there is no `proj`) filled from `checkpoint`; `proj` keeps its
  values."""
  return weights.fill(template, tensors(checkpoint, raw), source=checkpoint,
                      allow_missing=('proj/',))


def towers(checkpoint: str) -> dict:
  """A whole `CLIPModel` as numpy arrays:

    vision             `HfViT(features=E, **hf_vit.options(checkpoint))`'s
                       parameters (no `proj`)
    text               `ClipText(features=E, **options(checkpoint))`'s
    visual_projection  [E_image, P], no bias: image_embeds = pooled @ it
    text_projection    [E_text, P], no bias
    logit_scale        [] the log of the inverse temperature: logits =
                       exp(logit_scale) * cosine(image_embeds, text_embeds)
  """
  hf_vit.config(checkpoint, ('clip',), 'a two-tower CLIP load')
  vision_opts, text_opts = hf_vit.options(checkpoint), options(checkpoint)
  image = hf_vit_lib.HfViT(features=vision_opts['hidden_size'], **vision_opts)
  size = vision_opts['image_size']
  text = clip_text.ClipText(features=text_opts['hidden_size'], **text_opts)
  key = jax.random.key(0)
  raw = hf_vit.read(checkpoint)
  absent = [n for n in ('visual_projection.weight', 'text_projection.weight',
                        'logit_scale') if n not in raw]
  if absent:
    raise errors.UserError(
        f'the checkpoint {checkpoint} lacks {", ".join(absent)}; save the '
        f'whole CLIPModel, not one tower, to load both with their '
        f'projections.')
  as_numpy = lambda tree: jax.tree.map(np.asarray, tree)
  return {
      'vision': as_numpy(hf_vit.load(checkpoint, jax.eval_shape(
          image.init, key, jnp.zeros((1, size, size, 3)))['params'], raw)),
      'text': as_numpy(load(checkpoint, jax.eval_shape(
          text.init, key, jnp.zeros((1, 1), jnp.int32))['params'], raw)),
      'visual_projection': np.asarray(  # HF's [P, E] -> [E, P]
          raw['visual_projection.weight'].T, np.float32),
      'text_projection': np.asarray(raw['text_projection.weight'].T,
                                    np.float32),
      'logit_scale': np.asarray(raw['logit_scale'], np.float32),
  }
