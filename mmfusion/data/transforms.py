"""Per-batch numpy transforms, to map over Grain batches.

Each takes a batch in the batch contract (one key per modality, `label`,
`present/<modality>` bool [B]) and an `np.random.Generator`, and returns a new
dict; the input batch is never modified. Take the generator from `batch_rng(
seed, index)` so that a resumed run draws exactly what an uninterrupted one did.

  modality_dropout(batch, rates, rng)   training: hide modalities at random
  corrupt(batch, kind, severity, modalities, rng)
                                        evaluation: robustness at severity 0-5
  pad_or_crop, standardize              shape and scale helpers

A hidden (dropped) modality has `present/<m>` False and its array zeroed (all
padding for text), so no consumer can read it by mistake; an example always
keeps at least one of the modalities it had.
"""

import numpy as np

from mmfusion.runtime import errors
from mmfusion.data import corrupt as corrupt_lib

KINDS = ('gaussian_noise', 'occlusion', 'scramble', 'drop')
# Severity s in 0..5 picks entry s; 0 is always the identity.
PIXEL_NOISE = (0.0, 0.08, 0.12, 0.18, 0.26, 0.38)  # std / 255, as ImageNet-C
SNR_DB = (np.inf, 20.0, 10.0, 5.0, 0.0, -5.0)  # waveforms and vectors
OCCLUSION = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6)  # fraction of the area, zeroed
SCRAMBLE = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75)  # fraction of characters
DROP = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # chance an example loses the modality


def batch_rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
  """The generator of batch `index`; `salt` separates independent uses."""
  return np.random.default_rng([seed, index, salt])


def modalities_of(batch) -> list[str]:
  """Modalities a batch carries: those with a `present/` key, sorted."""
  return sorted(k.split('/', 1)[1] for k in batch if k.startswith('present/'))


def _present(batch, m):
  if m not in batch:
    raise errors.UserError(
        f'the batch has no modality {m!r}; it has: '
        f'{", ".join(modalities_of(batch)) or "none"}.')
  return np.asarray(batch.get(f'present/{m}', np.ones(len(batch[m]), bool)),
                    np.bool_)


def _hide(batch, drop_by_modality, rng):
  """Copy of `batch` with the [B] masks' examples hidden, keeping each example
  at least one of the modalities it had (a random one of those dropped)."""
  names = sorted(set(modalities_of(batch)) | set(drop_by_modality))
  before = np.stack([_present(batch, m) for m in names])  # [M, B]
  drop = np.stack([np.asarray(drop_by_modality.get(m, np.zeros(
      before.shape[1], bool))) & before[i] for i, m in enumerate(names)])
  after = before & ~drop
  for b in np.flatnonzero(~after.any(0) & before.any(0)):
    after[rng.choice(np.flatnonzero(drop[:, b])), b] = True
  out = dict(batch)
  for i, m in enumerate(names):
    out[f'present/{m}'] = after[i]
    hidden = before[i] & ~after[i]
    if hidden.any():
      x = np.array(batch[m], copy=True)
      x[hidden] = 0
      out[m] = x
  return out


def modality_dropout(batch, rates: dict[str, float], rng):
  """Hides modality m of each example with probability `rates[m]`."""
  bad = {m: r for m, r in rates.items() if not 0.0 <= r <= 1.0}
  if bad:
    raise errors.UserError(f'modality dropout rates must lie in [0, 1]; got '
                           f'{bad}.')
  drops = {m: rng.random(len(_present(batch, m))) < rates[m]
           for m in sorted(rates)}
  return _hide(batch, drops, rng)


def corrupt(batch, kind: str, severity: int, modalities, rng):
  """Corrupts `modalities` of every example by `kind` at `severity` 0-5.

  kinds: 'gaussian_noise' (uint8 pixels: std PIXEL_NOISE of 255; float arrays
  such as waveforms or vectors: per-example SNR_DB), 'occlusion' (images
  [B, H, W, C] or videos [B, F, H, W, C]: one zeroed rectangle of OCCLUSION
  of the area, the same in every frame), 'scramble' (token ids [B, L]:
  SCRAMBLE of the characters become random letters), 'drop' (each example
  loses the modality with chance DROP, keeping at least one).
  """
  if kind not in KINDS:
    raise errors.unknown_name('corruption', kind, KINDS)
  if severity not in range(6):
    raise errors.UserError(f'corruption severity must be 0..5, got '
                           f'{severity!r}.')
  modalities = [modalities] if isinstance(modalities, str) else list(modalities)
  for m in modalities:
    _present(batch, m)  # fails on a modality the batch lacks
  if severity == 0:
    return dict(batch)
  if kind == 'drop':
    return _hide(batch, {m: rng.random(len(batch[m])) < DROP[severity]
                         for m in modalities}, rng)
  out = dict(batch)
  for m in modalities:
    out[m] = _corrupt_array(m, np.asarray(batch[m]), kind, severity, rng)
  return out


def _corrupt_array(m, x, kind, severity, rng):
  pixels = x.dtype == np.uint8 and x.ndim in (4, 5)
  tokens = np.issubdtype(x.dtype, np.integer) and x.ndim == 2
  if kind == 'gaussian_noise' and pixels:
    return corrupt_lib.pixel_noise(x, PIXEL_NOISE[severity], rng)
  if kind == 'gaussian_noise' and np.issubdtype(x.dtype, np.floating):
    return np.stack([e + corrupt_lib.noise_at_snr(e, SNR_DB[severity], rng)
                     for e in x]).astype(x.dtype)
  if kind == 'occlusion' and x.ndim in (4, 5):
    return np.stack([corrupt_lib.occlude(e, OCCLUSION[severity], rng, 'zero')
                     for e in x])
  if kind == 'scramble' and tokens:
    return corrupt_lib.scramble_ids(x, SCRAMBLE[severity], rng)
  raise errors.UserError(
      f'{kind!r} cannot corrupt {m!r} ({x.dtype} {list(x.shape)}): noise '
      f'fits uint8 images and float arrays, occlusion images and videos, '
      f'scramble token ids; pick another kind or modality.')


def pad_or_crop(x, length: int, axis: int = 1, rng=None, pad_value=0):
  """`x` cut or right-padded to `length` along `axis`; the cut starts at 0, or
  at a random offset per call when `rng` is given (a random crop)."""
  x = np.asarray(x)
  n = x.shape[axis]
  if n >= length:
    start = int(rng.integers(0, n - length + 1)) if rng is not None else 0
    return np.take(x, np.arange(start, start + length), axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - n)
  return np.pad(x, pad, constant_values=pad_value)


def standardize(batch, key: str, mean, std):
  """Copy of `batch` with `batch[key]` as float32 (x - mean) / std."""
  out = dict(batch)
  out[key] = ((np.asarray(batch[key], np.float32) - np.float32(mean)) /
              np.float32(std))
  return out
