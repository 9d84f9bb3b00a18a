"""Speech augmentation: what each kind does to a signal, and its checks."""

import numpy as np
import pytest

from mmfusion.data import augment
from mmfusion.data import pipeline
from mmfusion.runtime import errors

RATE = 16_000
N = 8000  # 0.5 s


def _tone(hz, n=N, amplitude=0.5):
  return amplitude * np.sin(2 * np.pi * hz * np.arange(n) / RATE)


def _peak_hz(x):
  return np.abs(np.fft.rfft(x)).argmax() * RATE / len(x)


def _one(kind, x, seed=0, **options):
  spec = augment.parse({kind: {'p': 1.0, **options}}, 'audio')
  return augment.TRANSFORMS[kind](x, spec[kind], RATE,
                                  np.random.default_rng(seed))


def test_speed_moves_pitch_and_tempo_together():
  y = _one('speed', _tone(400), factor=(1.1, 1.1))
  assert abs(_peak_hz(y[:7000]) - 440) < 4
  assert abs(len(y) - N / 1.1) < 0.01 * N / 1.1  # FFT-friendly lengths


def test_pitch_moves_pitch_and_keeps_the_duration():
  y = _one('pitch', _tone(400), semitones=(3.0, 3.0))
  assert abs(_peak_hz(y) - 400 * 2 ** 0.25) < 6
  assert abs(len(y) - N) < 0.02 * N


def test_band_limit_keeps_the_band_and_cuts_outside_it():
  options = dict(low=(300.0, 300.0), high=(3000.0, 3000.0), mu_law=0.0)
  rms = lambda x: np.sqrt(np.mean(x[2000:] ** 2))
  assert rms(_one('band_limit', _tone(1000), **options)) > 0.3
  assert rms(_one('band_limit', _tone(60), **options)) < 0.01
  assert rms(_one('band_limit', _tone(6500), **options)) < 0.01
  # mu-law coding: 8 bits, so at most 256 levels.
  coded = _one('band_limit', _tone(1000), **{**options, 'mu_law': 1.0})
  assert len(np.unique(np.round(coded, 9))) <= 256


def test_reverb_is_a_decaying_tail_after_an_impulse():
  impulse = np.zeros(N)
  impulse[100] = 1.0
  y = _one('reverb', impulse, rt60=(0.3, 0.3), wet=(1.0, 1.0))
  energy = lambda a, b: np.sum(y[100 + int(a * RATE):100 + int(b * RATE)] ** 2)
  assert np.abs(y[:100]).max() < 1e-12  # causal (fftconvolve rounding)
  early, late = energy(0.001, 0.05), energy(0.25, 0.3)
  assert 10 * np.log10(early / late) > 30  # ~60 dB over RT60


def test_noise_is_added_at_the_drawn_snr_and_colour():
  x = _tone(500)
  for color in augment.COLORS:
    y = _one('noise', x, snr_db=(10.0, 10.0), colors=(color,))
    snr = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
    assert abs(snr - 10.0) < 0.01
  low_share = lambda n: (np.abs(np.fft.rfft(n))[1:200] ** 2).sum() / (
      np.abs(np.fft.rfft(n)) ** 2).sum()
  white = _one('noise', x, snr_db=(0.0, 0.0), colors=('white',)) - x
  brown = _one('noise', x, snr_db=(0.0, 0.0), colors=('brown',)) - x
  assert low_share(brown) > 10 * low_share(white)


def test_spec_mask_zeroes_time_spans_and_bands():
  from scipy import signal
  x = 0.1 * np.random.default_rng(0).standard_normal(N)
  stft = lambda y: np.abs(signal.stft(y, nperseg=augment.N_FFT, noverlap=(
      augment.N_FFT - augment.HOP))[2])  # [F, T]
  timed = stft(_one('spec_mask', x, freq_masks=0, time_masks=2,
                    max_seconds=0.1)).mean(0)[2:-2]
  banded = stft(_one('spec_mask', x, freq_masks=2, max_hz=1000.0,
                     time_masks=0)).mean(1)[2:-2]
  for masked in (timed, banded):
    assert masked.min() < 0.1 * np.median(masked)
  plain = stft(x)
  assert plain.mean(0)[2:-2].min() > 0.5 * np.median(plain.mean(0))


def test_apply_keeps_shape_bounds_and_absent_examples():
  rng = np.random.default_rng(0)
  audio = (0.2 * rng.standard_normal((6, N))).astype(np.float32)
  present = np.array([True, True, False, True, True, True])
  batch = {'audio': audio, 'present/audio': present}
  parsed = augment.check({'audio': {k: 1.0 for k in augment.KINDS}},
                         ['audio'])
  out = augment.apply(batch, parsed, np.random.default_rng(1))
  assert out['audio'].shape == audio.shape and out['audio'].dtype == np.float32
  assert np.abs(out['audio'][present]).max() <= 1.0
  np.testing.assert_array_equal(out['audio'][2], audio[2])
  assert not np.allclose(out['audio'][present], audio[present])
  np.testing.assert_array_equal(batch['audio'], audio)  # input untouched
  again = augment.apply(batch, parsed, np.random.default_rng(1))
  np.testing.assert_array_equal(again['audio'], out['audio'])
  none = augment.apply(batch, augment.check({'audio': {'reverb': 0.0}},
                                            ['audio']), rng)
  np.testing.assert_array_equal(none['audio'], audio)


def test_training_batches_are_augmented_the_same_on_resume():
  rng = np.random.default_rng(0)
  source = [{'audio': (0.2 * rng.standard_normal(4000)).astype(np.float32),
             'label': i % 3} for i in range(16)]
  make = lambda spec: iter(pipeline.train_batches(
      source, batch_size=4, seed=5, modalities=('audio',), augment=spec))
  spec = {'audio': {'noise': 1.0, 'speed': 0.5}}
  plain, first, second = make({}), make(spec), make(spec)
  for _ in range(3):
    a, b, p = next(first), next(second), next(plain)
    np.testing.assert_array_equal(a['audio'], b['audio'])
    np.testing.assert_array_equal(a['label'], p['label'])
    assert not np.allclose(a['audio'], p['audio'])


@pytest.mark.parametrize('spec, words', [
    ({'audio': {'echo': 0.5}}, "no augmentation 'echo'"),
    ({'audio': {'reverb': {'p': 0.5, 'decay': 1}}}, r"no option \['decay'\]"),
    ({'audio': {'noise': 1.5}}, r'noise.p=1.5 must be a probability'),
    ({'audio': {'band_limit': {'high': (5000, 9000)}}}, 'sample_rate / 2'),
    ({'audio': {'pitch': {'semitones': (3, -3)}}}, 'low <= high'),
    ({'audio': {'noise': {'colors': ('blue',)}}}, 'must name some of'),
    ({'audio': {'sample_rate': -1}}, 'positive number of Hz'),
    ({'video': {'noise': 0.5}}, r"names \['video'\], which data.modalities"),
])
def test_bad_specs_are_one_sentence(spec, words):
  with pytest.raises(errors.UserError, match=words):
    augment.check(spec, ['audio'])


def test_a_modality_that_is_no_waveform_is_refused():
  parsed = augment.check({'text': {'noise': 0.5}}, ['text'])
  with pytest.raises(errors.UserError, match='needs float waveforms'):
    augment.apply({'text': np.zeros((2, 8), np.int32)}, parsed,
                  np.random.default_rng(0))
