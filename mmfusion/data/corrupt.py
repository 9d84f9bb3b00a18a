"""Corruptions of one example's modality, pure numpy, randomness from `rng`.

The building blocks of the `av_digits/noisy` builder config and of the
test-time corruptions in `mmfusion.data.transforms`: occlusion and pixel noise
for uint8 images (or video frames), additive noise at a signal-to-noise ratio
for waveforms and vectors, and character edits or scrambling for text (as
strings or as byte-token ids with 0 = padding).
"""

import numpy as np

LETTERS = 'abcdefghijklmnopqrstuvwxyz'
_LETTER_IDS = np.frombuffer(LETTERS.encode(), np.uint8).astype(np.int32)


def occlude(pixels, fraction: float, rng, fill: str = 'noise'):
  """uint8 `pixels` [..., H, W, C] with one rectangle covering `fraction` of
  each frame's area at a random place (the same place in every frame).

  `fill`: 'noise' (uniform random pixels, a cluttered occluder) or 'zero'.
  """
  pixels = np.array(pixels, copy=True)
  h, w = pixels.shape[-3:-1]
  if fraction <= 0:
    return pixels
  aspect = rng.uniform(0.75, 1.33)
  ph = int(np.clip(round(np.sqrt(fraction * h * w * aspect)), 1, h))
  pw = int(np.clip(round(fraction * h * w / ph), 1, w))
  top, left = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
  patch = pixels[..., top:top + ph, left:left + pw, :]
  if fill == 'noise':
    patch[...] = rng.integers(0, 256, patch.shape, dtype=np.uint8)
  else:
    patch[...] = 0
  return pixels


def pixel_noise(pixels, sigma: float, rng):
  """uint8 `pixels` plus Gaussian noise of std `sigma` (fraction of 255)."""
  x = np.asarray(pixels, np.float32) + rng.normal(0, 255 * sigma,
                                                  np.shape(pixels))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noise_at_snr(signal, snr_db: float, rng, spectrum=None):
  """float32 noise shaped like `signal` whose power is `snr_db` below the
  signal's mean power (over the whole array).

  `spectrum`: optional rfft magnitudes [len // 2 + 1] for coloured noise (e.g.
  the long-term spectrum of speech); white when None.
  """
  signal = np.asarray(signal, np.float32)
  if spectrum is None:
    noise = rng.standard_normal(signal.shape)
  else:
    phase = rng.uniform(0, 2 * np.pi, len(spectrum))
    noise = np.fft.irfft(spectrum * np.exp(1j * phase), n=signal.shape[-1])
  power = float(np.mean(signal.astype(np.float64) ** 2))
  noise_power = max(float(np.mean(noise ** 2)), 1e-20)
  scale = np.sqrt(power / noise_power * 10.0 ** (-snr_db / 10.0))
  return (noise * scale).astype(np.float32)


def edit_word(word: str, num_edits: int, rng) -> str:
  """`word` after `num_edits` random typos: adjacent swaps, drops, substitutions
  (a word is never edited down to nothing)."""
  chars = list(word)
  for _ in range(num_edits):
    kind = rng.integers(3) if len(chars) > 1 else 2
    if kind == 0:
      i = int(rng.integers(len(chars) - 1))
      chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif kind == 1:
      del chars[int(rng.integers(len(chars)))]
    else:
      chars[int(rng.integers(len(chars)))] = LETTERS[rng.integers(26)]
  return ''.join(chars)


def random_letters(rng, min_len: int = 3, max_len: int = 8) -> str:
  """A string of random lowercase letters: text that says nothing."""
  n = int(rng.integers(min_len, max_len + 1))
  return ''.join(LETTERS[i] for i in rng.integers(0, len(LETTERS), n))


def scramble_ids(ids, fraction: float, rng):
  """int token ids [..., L] (0 = padding) with `fraction` of the real tokens
  replaced by random lowercase-letter bytes; padding stays padding."""
  ids = np.array(ids, copy=True)
  real = ids != 0
  hit = real & (rng.random(ids.shape) < fraction)
  ids[hit] = rng.choice(_LETTER_IDS, int(hit.sum()))
  return ids
