"""From `config.data` to per-process numpy batches.

TFDS builder (array_record files) -> `as_data_source` (random access) -> Grain.
Training batches come from a `grain.MapDataset` that is shuffled anew every
epoch and repeats forever; its iterator state is one integer, saved in every
checkpoint, so a resumed run reads exactly the batches it would have read.
Evaluation reads a split once, in order, padding the last batch and marking the
padding with `valid == False`, so no example is dropped or counted twice.

Batch contract (see DESIGN.md): one key per modality, `present/<modality>`
bool [B], and the targets the run's task reads (`info.TARGETS`: `label` int32
[B], `labels` float32 [B, C] multi-hot, `target` float32 [B, R]).
"""

import dataclasses
import functools
import hashlib
import json
import math
import sys
import time

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors, files
from mmfusion.data import BUILDERS
from mmfusion.data import augment as augment_lib
from mmfusion.data import info as info_lib
from mmfusion.data import transforms


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
  """Builds the dataset's array_record files once; later calls only read.

  In a multi-process run process 0 builds while the others wait, so no two
  processes write the same files.
  """
  if jax.process_index() == 0:
    _build(builder)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'prepare {builder.info.full_name}')
    _build(builder)


def _build(builder):
  """`download_and_prepare`, told in two plain lines; TFDS's progress bars
  (`\\r` and escape codes) only when the output is a terminal."""
  # TFDS 4.9 prints its "Downloading and preparing ..." banner here.
  for method in ('_log_download_bytes', '_log_download_done'):
    setattr(builder, method, lambda: None)
  if not (sys.stdout.isatty() and sys.stderr.isatty()):
    tfds.disable_progress_bar()
  if builder.is_prepared():
    return builder.download_and_prepare(file_format='array_record')
  print(f'Building {builder.info.full_name} in {builder.data_dir_root} ...',
        flush=True)
  t0 = time.perf_counter()
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:  # pylint: disable=broad-except
    if not files.is_write_error(e):
      raise
    raise files.write_error(
        builder.data_dir_root, e, what=f'{builder.info.full_name} to ',
        then='run the same command again to build it (TFDS keeps no '
             'half-built dataset)') from None
  n = sum(split.num_examples for split in builder.info.splits.values())
  print(f'... built ({n:,} examples, {time.perf_counter() - t0:.0f} s)',
        flush=True)


def check_modalities(builder, modalities):
  """Fails with one sentence when the config asks for a modality not there."""
  have = [k for k in builder.info.features.keys()
          if k not in info_lib.TARGETS]
  missing = [m for m in modalities if m not in have]
  if missing:
    raise errors.UserError(
        f'data.modalities asks for {missing}, which {builder.info.full_name} '
        f'does not have; it has: {", ".join(have)}.')


def _to_batch(examples, modalities, targets=('label',)):
  """Stacked dict of one batch in the batch contract, with the target keys
  `targets` (info.TARGETS) that the run's task reads."""
  batch = {m: np.stack([ex[m] for ex in examples]) for m in modalities}
  for key in targets:
    batch[key] = np.asarray([ex[key] for ex in examples],
                            info_lib.TARGETS[key])
  # Datasets with gaps (manifest) say what is there; numbers always are.
  for m in modalities:
    batch[f'present/{m}'] = np.asarray(
        [ex['present'].get(m, True) if 'present' in ex else True
         for ex in examples],
        np.bool_)
  return batch


# Splits whose decoded arrays fit in this many bytes are decoded once and
# batched from memory: decoding a TFDS record costs ~50-130 us in Python, which
# caps a per-record pipeline at ~10k examples/s, far below a small model's step.
IN_MEMORY_BYTES = 2**30
# batch_rng salts: modality dropout uses 1 + process, augmentation this + it.
AUGMENT_SALT = 1 << 16


def _read(source, indices) -> list:
  """Records `indices` of `source`, with one batched read where it has one."""
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    return list(getitems([int(i) for i in indices]))
  return [source[int(i)] for i in indices]


def in_memory(source, modalities, max_bytes: int = IN_MEMORY_BYTES,
              targets=('label',)):
  """The whole of `source` as one stacked batch dict, or None when its decoded
  arrays would take more than `max_bytes` (estimated from the first record)."""
  n = len(source)
  if n == 0:
    return None
  first = _to_batch(_read(source, [0]), modalities, targets)
  if n * sum(v.nbytes for v in first.values()) > max_bytes:
    return None
  chunks = [_to_batch(_read(source, range(i, min(i + 1024, n))), modalities,
                      targets) for i in range(0, n, 1024)]
  return {k: np.concatenate([c[k] for c in chunks]) for k in first}


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, n: int, epoch: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the n records, drawn from (seed,
  epoch): vectorised, so batching costs microseconds, not a lookup per row.
  Module-level, so a dataset that uses it pickles (Grain's worker processes).
  """
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(source, *, batch_size: int, seed: int, modalities,
                  process_index: int = 0, process_count: int = 1,
                  modality_dropout: dict | None = None,
                  augment: dict | None = None,
                  in_memory_bytes: int = IN_MEMORY_BYTES,
                  targets=('label',)):
  """Endless per-process batches of `batch_size`, reshuffled every epoch.

  Global batch g is elements [g*G, (g+1)*G) of one shuffled stream (G =
  batch_size * process_count) and process p reads rows [p*L, (p+1)*L) of it,
  so any number of processes trains on exactly the batches one process would.
  `modality_dropout` ({modality: probability}) hides modalities per example,
  recorded in `present/<m>`, drawn from (seed, batch index, process): a
  resumed run sees the same masks. `augment` (`config.data.augment`)
  augments speech after that, drawn the same way (`augment`). A split that fits in `in_memory_bytes` is
  decoded once and batched by indexing; the batches are the same either way.
  Rows need not be in one epoch: a split smaller than a batch repeats in it.
  """
  n, local, global_ = len(source), batch_size, batch_size * process_count
  permutation = functools.partial(_permutation, seed, n)

  def records(b):  # record indices of this process's batch b
    pos_L = b * global_ + process_index * local + np.arange(local)
    epoch_L, k_L = np.divmod(pos_L, n)
    rows_L = np.empty(local, np.int64)
    for e in np.unique(epoch_L):  # one epoch, or two where a batch spans them
      rows_L[epoch_L == e] = permutation(int(e))[k_L[epoch_L == e]]
    return rows_L

  arrays = in_memory(source, modalities, in_memory_bytes, targets)

  def batch_of(b):
    rows_L = records(b)
    if arrays is None:
      return _to_batch(_read(source, rows_L), modalities, targets)
    return {k: v[rows_L] for k, v in arrays.items()}

  ds = grain.MapDataset.range(sys.maxsize // global_).map(batch_of)
  if modality_dropout:
    rates = dict(modality_dropout)
    unknown = sorted(set(rates) - set(modalities))
    if unknown:
      raise errors.UserError(
          f'data.modality_dropout names {unknown}, which data.modalities '
          f'({list(modalities)}) does not have; drop them or add the modality.')
    ds = ds.map_with_index(lambda i, batch: transforms.modality_dropout(
        batch, rates, transforms.batch_rng(seed, i, salt=1 + process_index)))
  if augment:
    parsed = augment_lib.check(augment, modalities)
    ds = ds.map_with_index(lambda i, batch: augment_lib.apply(
        batch, parsed, transforms.batch_rng(
            seed, i, salt=AUGMENT_SALT + process_index)))
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def eval_batches(source, *, batch_size: int, modalities,
                 process_index: int = 0, process_count: int = 1,
                 targets=('label',)):
  """One ordered pass over `source` in padded batches with a `valid` mask."""
  n = len(source)
  global_batch = batch_size * process_count
  for b in range(math.ceil(n / global_batch)):
    start = b * global_batch + process_index * batch_size
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    batch = _to_batch([source[int(i)] for i in np.minimum(idx, n - 1)],
                      modalities, targets)
    batch['valid'] = valid
    yield batch


def batch_spec(builder, modalities, batch_size: int,
               targets=('label',)) -> dict:
  """{key: (shape, dtype)} that every per-process batch must have."""
  features = builder.info.features
  spec = {m: ((batch_size,) + tuple(features[m].shape),
              np.dtype(features[m].np_dtype)) for m in modalities}
  for key in targets:
    spec[key] = ((batch_size,) + tuple(features[key].shape),
                 np.dtype(info_lib.TARGETS[key]))
  for m in modalities:
    spec[f'present/{m}'] = ((batch_size,), np.dtype(np.bool_))
  return spec


def check_batch(batch: dict, spec: dict):
  """Fails in one sentence on a batch that does not fit the model's inputs."""
  extra = sorted(set(batch) - set(spec) - {'valid'})
  if extra:
    raise errors.UserError(
        f'the batch has {extra}, which config.data.modalities '
        f'({[k for k in spec if "/" not in k and k not in info_lib.TARGETS]}) does not '
        f'list; add them there or drop them from the data.')
  for key, (shape, dtype) in spec.items():
    if key not in batch:
      raise errors.UserError(
          f'the batch has no {key!r}; the data must provide it (modalities '
          f'come from config.data.modalities).')
    x = np.asarray(batch[key])
    if x.shape != shape or x.dtype != dtype:
      raise errors.UserError(
          f'batch {key!r} is {x.dtype}{list(x.shape)} but the model was built '
          f'for {dtype}{list(shape)}; fix the data pipeline or the config.')
