"""The benchmarked models: real experiment configs, fed fixed random batches.

  seed         mmfusion/configs/seed.py: MLP encoders, `concat` fusion;
               with --fusions, one row per registered fusion method.
  av           mmfusion/configs/av_digits.py: CNN image, log-mel
               `audio_cnn`, GRU text, `concat`, MLP head.
  transformer  `av` with the MBT `bottleneck` Transformer fusion.

Each runs with its config's `model.kernels` ('auto': xla_cpu on CPU, flax
elsewhere), or with the kernel set a row asks for (`+flax` rows). Shapes and
dtypes come from each dataset's feature spec (no data is built or read). The
batch is random and fixed, so a timed step is compute only; the input
pipeline is timed on its own (`run.pipeline_rate`).
"""

import dataclasses

import jax
import ml_collections
import numpy as np

from mmfusion import build, encoders, fusion
from mmfusion.configs import av_digits
from mmfusion.configs import seed
from mmfusion.nn import registry

# name -> (config module, fusion override or None)
MODELS = {
    'seed': (seed, None),
    'av': (av_digits, None),
    'transformer': (av_digits, 'bottleneck'),
}


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str  # a table row: 'av', 'seed/tensor', 'av (flax kernels)'
  config: ml_collections.ConfigDict
  batch_size: int


def get_spec(model: str, fusion_name: str | None = None,
             batch_size: int | None = None,
             kernels: str | None = None) -> Spec:
  """`model` (a MODELS key) with its default fusion, or `fusion_name`
  instead, and its config's kernel set, or `kernels` instead."""
  if model not in MODELS:
    raise ValueError(f'unknown model {model!r}; pick from {", ".join(MODELS)}.')
  module, default_fusion = MODELS[model]
  config = module.get_config()
  config.model.fusion = fusion_name or default_fusion or config.model.fusion
  name = model if fusion_name is None else f'{model}/{fusion_name}'
  if kernels:
    config.model.kernels = kernels
    name += f' ({kernels} kernels)'
  return Spec(name, config, int(batch_size or config.batch_size))


def input_spec(config, batch_size: int):
  """({key: ShapeDtypeStruct} of one batch, num_classes), from the run
  `build.run` makes: the dataset's builder is made, nothing built or read."""
  run = build.run(config)
  return run.abstract_batch(batch_size), run.data.num_classes


def make_batch(abstract: dict, num_classes: int, config,
               seed_: int = 0) -> dict:
  """A random numpy batch in the batch contract, every modality present.

  Token ids are right-padded with 0 to random lengths, so the text encoders
  see padding as they would in real data.
  """
  rng = np.random.default_rng(seed_)
  batch = {}
  for key, a in abstract.items():
    shape, dtype = a.shape, np.dtype(a.dtype)
    if key == 'label':
      batch[key] = rng.integers(0, num_classes, shape).astype(dtype)
    elif key.startswith('present/') or dtype == np.bool_:
      batch[key] = np.ones(shape, dtype)
    elif dtype == np.uint8:
      batch[key] = rng.integers(0, 256, shape).astype(dtype)
    elif np.issubdtype(dtype, np.integer):  # token ids [B, L]
      vocab = config.model.encoders[key].get('vocab_size', 256)
      ids = rng.integers(1, vocab, shape)
      lengths = rng.integers(max(1, shape[-1] // 4), shape[-1] + 1, shape[:-1])
      ids[np.arange(shape[-1]) >= lengths[..., None]] = 0
      batch[key] = ids.astype(dtype)
    else:
      batch[key] = (0.1 * rng.standard_normal(shape)).astype(dtype)
  return batch


def takes_kernels(spec: Spec) -> bool:
  """Whether a module of `spec`'s model is built from `model.kernels` (a CNN
  or attention encoder or fusion): only those get a `+flax` row."""
  model = spec.config.model
  stage = fusion.get_fusion(model.fusion).stage
  names = ([model.early_encoder['name']] if stage == 'early' else
           [e['name'] for e in model.encoders.values()])
  classes = [encoders.ENCODERS[n] for n in names]
  classes.append(fusion.get_fusion(model.fusion).module)
  return any('kernels' in registry.options_of(c) for c in classes)


def backend_summary() -> str:
  """'cpu: 1 x cpu' style line of what JAX runs on."""
  d = jax.devices()
  return f'{jax.default_backend()}: {len(d)} x {d[0].device_kind}'
