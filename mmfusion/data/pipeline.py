"""From `config.data` to per-process numpy batches.

TFDS builder (array_record files) -> `as_data_source` (random access) -> Grain.
Training batches come from a `grain.MapDataset` that is shuffled anew every
epoch and repeats forever; its iterator state is one integer, saved in every
checkpoint, so a resumed run reads exactly the batches it would have read.
Evaluation reads a split once, in order, padding the last batch and marking the
padding with `valid == False`, so no example is dropped or counted twice.

Batch contract (see DESIGN.md): one key per modality, `label` int32 [B], and
`present/<modality>` bool [B].
"""

import dataclasses
import hashlib
import json
import math

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmfusion import errors
from mmfusion.data import BUILDERS


def _custom_config(base, overrides: dict):
  """`base` with `overrides` applied, named by a digest of the result."""
  own = {f.name for f in dataclasses.fields(base)}
  own -= {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  unknown = sorted(set(overrides) - own)
  if unknown:
    raise errors.UserError(
        f'data.overrides has {unknown}, which {base.name!r} does not have; '
        f'its fields are: {", ".join(sorted(own))}.')
  values = {f: getattr(base, f) for f in own}
  values.update(overrides)
  values = json.loads(json.dumps(values, default=list))  # tuples -> lists
  values = {k: tuple(map(tuple, v)) if k == 'modalities' else
            (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
  digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()
  return type(base)(name=f'{base.name}-{digest[:8]}',
                    description=base.description, **values)


def get_builder(data_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder that `data.name` (and `data.overrides`) describe."""
  name = data_config.name
  family, _, variant = name.partition('/')
  if family not in BUILDERS:
    try:
      return tfds.builder(name, data_dir=data_config.get('data_dir'))
    except tfds.core.registered.DatasetNotFoundError:
      raise errors.unknown_name('dataset', family, BUILDERS) from None
  cls = BUILDERS[family]
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  if variant not in configs:
    raise errors.unknown_name(f'{family} config', variant, configs)
  config = configs[variant]
  overrides = dict(data_config.get('overrides') or {})
  if overrides:
    config = _custom_config(config, overrides)
  try:
    return cls(config=config, data_dir=data_config.get('data_dir'))
  except ValueError as e:
    raise errors.UserError(f'data config {name!r} cannot be built: {e}.') from None


def prepare(builder):
  """Builds the dataset's array_record files once; later calls only read."""
  builder.download_and_prepare(file_format='array_record')


def check_modalities(builder, modalities):
  """Fails with one sentence when the config asks for a modality not there."""
  have = [k for k in builder.info.features.keys() if k != 'label']
  missing = [m for m in modalities if m not in have]
  if missing:
    raise errors.UserError(
        f'data.modalities asks for {missing}, which {builder.info.full_name} '
        f'does not have; it has: {", ".join(have)}.')


def _to_batch(examples, modalities):
  """Stacked dict of one batch in the batch contract."""
  batch = {m: np.stack([ex[m] for ex in examples]) for m in modalities}
  batch['label'] = np.asarray([ex['label'] for ex in examples], np.int32)
  for m in modalities:
    batch[f'present/{m}'] = np.ones(len(examples), np.bool_)
  return batch


def train_batches(source, *, batch_size: int, seed: int, modalities,
                  process_index: int = 0, process_count: int = 1):
  """Endless per-process batches of `batch_size`, reshuffled every epoch."""
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  ds = ds[process_index::process_count]  # each process its own examples
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=list)
  ds = ds.map(lambda examples: _to_batch(examples, modalities))
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def eval_batches(source, *, batch_size: int, modalities,
                 process_index: int = 0, process_count: int = 1):
  """One ordered pass over `source` in padded batches with a `valid` mask."""
  n = len(source)
  global_batch = batch_size * process_count
  for b in range(math.ceil(n / global_batch)):
    start = b * global_batch + process_index * batch_size
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    batch = _to_batch([source[int(i)] for i in np.minimum(idx, n - 1)],
                      modalities)
    batch['valid'] = valid
    yield batch
