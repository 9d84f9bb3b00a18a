"""Training-time speech augmentation, by config, on waveform batches.

  config.data.augment = {'audio': {'band_limit': 0.5, 'reverb': 0.3,
                                   'noise': {'p': 0.5, 'snr_db': (0, 20)}}}

Keys are modalities holding float waveforms [B, S]; under each, a kind maps
to the chance it touches an example (a number), or to {'p': chance, option:
value} to change its options (DEFAULTS lists them all). 'sample_rate'
(default 16,000) gives the waveforms' rate. Kinds apply in the order below,
each to its own random examples; every output keeps the input's length,
lies in [-1, 1], and is drawn from (seed, batch index), so a resumed run
augments exactly as an uninterrupted one did. Only training batches are
augmented.

  speed       resample by a factor in `factor`: tempo and pitch change
              together (Ko et al., Interspeech 2015).
  pitch       shift by `semitones`, same duration: a phase-vocoder stretch
              (Flanagan & Golden 1966) then a resample.
  reverb      convolve with a synthetic room's impulse response: a direct
              path, then exponentially decaying noise of RT60 `rt60` s, mixed
              `wet` to the dry signal.
  band_limit  a telephone channel: 4th-order Butterworth band-pass from `low`
              to `high` Hz, then with chance `mu_law` 8-bit mu-law coding
              (G.711).
  noise       white, pink or brown noise (`colors`) at `snr_db`.
  spec_mask   SpecAugment's masks (Park et al., Interspeech 2019) on the
              STFT: `freq_masks` bands up to `max_hz` wide and `time_masks`
              spans up to `max_seconds` long are zeroed, then resynthesized,
              so every audio encoder sees them.

Ranges are (low, high), drawn uniformly per example.
"""

import numpy as np

from mmfusion.runtime import errors
from mmfusion.data import corrupt

DEFAULTS = {
    'speed': {'p': 0.0, 'factor': (0.9, 1.1)},
    'pitch': {'p': 0.0, 'semitones': (-3.0, 3.0)},
    'reverb': {'p': 0.0, 'rt60': (0.15, 0.8), 'wet': (0.3, 1.0)},
    'band_limit': {'p': 0.0, 'low': (200.0, 500.0), 'high': (2500.0, 4000.0),
                   'mu_law': 0.5},
    'noise': {'p': 0.0, 'snr_db': (5.0, 30.0),
              'colors': ('white', 'pink', 'brown')},
    'spec_mask': {'p': 0.0, 'freq_masks': 2, 'max_hz': 800.0, 'time_masks': 2,
                  'max_seconds': 0.1},
}
KINDS = tuple(DEFAULTS)
COLORS = {'white': 0.0, 'pink': 1.0, 'brown': 2.0}  # power ~ 1 / f**alpha
SAMPLE_RATE = 16_000
N_FFT, HOP = 512, 128  # STFT of pitch and spec_mask (32 / 8 ms at 16 kHz)


# ------------------------------------------------------------------ Specs ---
def _fail(modality, text):
  raise errors.UserError(f'data.augment.{modality}: {text}.')


def _range(modality, kind, name, value):
  low, high = (float(v) for v in value)
  if low > high:
    _fail(modality, f'{kind}.{name}={tuple(value)} must be (low, high) with '
          f'low <= high')
  return low, high


def parse(spec, modality: str) -> dict:
  """{kind: options} of one modality's entry, defaults filled; a UserError in
  one sentence naming the first unknown kind, option or bad value."""
  spec = dict(spec)
  rate = spec.pop('sample_rate', SAMPLE_RATE)
  if not isinstance(rate, (int, float)) or rate <= 0:
    _fail(modality, f'sample_rate={rate!r} must be a positive number of Hz')
  out = {'sample_rate': float(rate)}
  for kind, value in spec.items():
    if kind not in DEFAULTS:
      _fail(modality, f'there is no augmentation {kind!r}; the kinds are '
            f'{", ".join(KINDS)} (and sample_rate)')
    options = dict(value) if hasattr(value, 'items') else {'p': value}
    unknown = sorted(set(options) - set(DEFAULTS[kind]))
    if unknown:
      _fail(modality, f'{kind} has no option {unknown}; its options are '
            f'{", ".join(DEFAULTS[kind])}')
    merged = {**DEFAULTS[kind], **options}
    for name in ('p', 'mu_law'):
      if name in merged and not 0.0 <= float(merged[name]) <= 1.0:
        _fail(modality, f'{kind}.{name}={merged[name]!r} must be a '
              f'probability in [0, 1]')
    for name, default in DEFAULTS[kind].items():
      if isinstance(default, tuple) and name != 'colors':
        merged[name] = _range(modality, kind, name, merged[name])
    if kind == 'band_limit' and not (
        0 < merged['low'][0] and merged['high'][1] < rate / 2 and
        merged['low'][1] < merged['high'][0]):
      _fail(modality, f'band_limit needs 0 < low < high < sample_rate / 2 = '
            f'{rate / 2:g} Hz, got low={merged["low"]}, '
            f'high={merged["high"]}')
    if kind == 'speed' and merged['factor'][0] <= 0:
      _fail(modality, f'speed.factor={merged["factor"]} must be positive')
    if kind == 'noise':
      bad = sorted(set(merged['colors']) - set(COLORS))
      if bad or not merged['colors']:
        _fail(modality, f'noise.colors={tuple(merged["colors"])} must name '
              f'some of {", ".join(COLORS)}')
    out[kind] = merged
  return out


def check(augment, modalities) -> dict:
  """{modality: parsed spec} of `config.data.augment`, checked."""
  unknown = sorted(set(augment) - set(modalities))
  if unknown:
    raise errors.UserError(
        f'data.augment names {unknown}, which data.modalities '
        f'({list(modalities)}) does not have; drop them or add the modality.')
  return {m: parse(spec, m) for m, spec in sorted(augment.items())}


# ------------------------------------------------------------ Transforms ---
def _fit(y, length: int):
  """`y` cut or zero-padded to `length`."""
  return y[:length] if len(y) >= length else np.pad(y, (0, length - len(y)))


def resample(x, factor: float):
  """`x` played about `factor` times faster: band-limited FFT resampling
  between FFT-friendly lengths (the factor moves by under 1%), a few ms
  where polyphase filtering at such fine ratios takes tens."""
  from scipy import fft, signal  # pylint: disable=g-import-not-at-top
  n = fft.next_fast_len(len(x), real=True)
  m = fft.next_fast_len(max(int(round(n / factor)), 1), real=True)
  y = signal.resample(np.pad(x, (0, n - len(x))), m)
  return y[:int(round(len(x) * m / n))]


def stretch(x, rate: float):
  """`x` `rate` times faster (len / rate samples), pitch kept: a phase
  vocoder over a 512-point STFT with hop 128."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  _, _, z = signal.stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP)  # [F, T]
  steps = np.arange(0, z.shape[1] - 1, rate)
  i = steps.astype(int)
  frac = (steps - i)[None]
  mag = (1 - frac) * np.abs(z[:, i]) + frac * np.abs(z[:, i + 1])
  expected = 2 * np.pi * HOP * np.arange(z.shape[0])[:, None] / N_FFT
  delta = np.angle(z[:, i + 1]) - np.angle(z[:, i]) - expected
  delta -= 2 * np.pi * np.round(delta / (2 * np.pi))
  phase = np.angle(z[:, :1]) + np.concatenate(
      [np.zeros_like(expected), np.cumsum(expected + delta, 1)[:, :-1]], 1)
  _, y = signal.istft(mag * np.exp(1j * phase), nperseg=N_FFT,
                      noverlap=N_FFT - HOP)
  return y


def speed(x, o, rate, rng):
  del rate
  return resample(x, rng.uniform(*o['factor']))


def pitch(x, o, rate, rng):
  del rate
  factor = 2.0 ** (rng.uniform(*o['semitones']) / 12)
  return resample(stretch(x, 1.0 / factor), factor)


def room_response(rt60: float, rate: float, rng):
  """float [N] impulse response: 1 (direct path), then noise decaying by
  60 dB over `rt60` seconds."""
  t = np.arange(1, int(rt60 * rate)) / rate
  tail = rng.standard_normal(len(t)) * np.exp(-np.log(1000.0) * t / rt60)
  return np.concatenate([[1.0], tail / max(np.sqrt(np.sum(tail ** 2)), 1e-9)])


def reverb(x, o, rate, rng):
  from scipy import signal  # pylint: disable=g-import-not-at-top
  wet = signal.fftconvolve(x, room_response(rng.uniform(*o['rt60']), rate,
                                            rng))[:len(x)]
  mix = rng.uniform(*o['wet'])
  return (1 - mix) * x + mix * wet * (np.std(x) / max(np.std(wet), 1e-9))


def band_limit(x, o, rate, rng):
  from scipy import signal  # pylint: disable=g-import-not-at-top
  band = sorted((rng.uniform(*o['low']), rng.uniform(*o['high'])))
  y = signal.sosfilt(signal.butter(4, band, btype='band', fs=rate,
                                   output='sos'), x)
  if rng.random() < o['mu_law']:
    mu = 255.0
    peak = max(np.abs(y).max(), 1e-9)
    code = np.round(np.sign(y) * np.log1p(mu * np.abs(y / peak)) /
                    np.log1p(mu) * 127) / 127
    y = peak * np.sign(code) * np.expm1(np.abs(code) * np.log1p(mu)) / mu
  return y


def noise(x, o, rate, rng):
  del rate
  alpha = COLORS[o['colors'][rng.integers(len(o['colors']))]]
  f = np.fft.rfftfreq(len(x))
  spectrum = np.where(f > 0, np.maximum(f, f[1]) ** (-alpha / 2), 0.0)
  return x + corrupt.noise_at_snr(x, rng.uniform(*o['snr_db']), rng,
                                  spectrum)


def spec_mask(x, o, rate, rng):
  from scipy import signal  # pylint: disable=g-import-not-at-top
  _, _, z = signal.stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP)  # [F, T]
  bins = int(o['max_hz'] * N_FFT / rate)
  frames = int(o['max_seconds'] * rate / HOP)
  for _ in range(int(o['freq_masks'])):
    w = rng.integers(0, bins + 1)
    lo = rng.integers(0, max(z.shape[0] - w, 0) + 1)
    z[lo:lo + w] = 0
  for _ in range(int(o['time_masks'])):
    w = rng.integers(0, frames + 1)
    lo = rng.integers(0, max(z.shape[1] - w, 0) + 1)
    z[:, lo:lo + w] = 0
  _, y = signal.istft(z, nperseg=N_FFT, noverlap=N_FFT - HOP)
  return y


TRANSFORMS = {'speed': speed, 'pitch': pitch, 'reverb': reverb,
              'band_limit': band_limit, 'noise': noise, 'spec_mask': spec_mask}


def apply(batch, parsed: dict, rng):
  """Copy of `batch` with each modality of `parsed` (from `check`) augmented;
  examples whose modality is absent (`present/<m>` False) are left alone."""
  out = dict(batch)
  for m, spec in parsed.items():
    x = np.asarray(batch[m])
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
      raise errors.UserError(
          f'data.augment.{m}: speech augmentation needs float waveforms '
          f'[batch, samples], and {m!r} is {x.dtype} {list(x.shape)}; drop '
          f'it from data.augment.')
    present = np.asarray(batch.get(f'present/{m}', np.ones(len(x), bool)))
    y = np.array(x, copy=True)
    touched = np.zeros(len(x), np.bool_)
    for kind in KINDS:
      if kind not in spec:
        continue
      chosen = (rng.random(len(x)) < spec[kind]['p']) & present
      for b in np.flatnonzero(chosen):
        y[b] = _fit(TRANSFORMS[kind](y[b].astype(np.float64), spec[kind],
                                     spec['sample_rate'], rng), x.shape[1])
      touched |= chosen
    y[touched] = np.clip(y[touched], -1.0, 1.0)
    out[m] = y
  return out
