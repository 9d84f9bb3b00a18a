"""Per-batch transforms: modality dropout and test-time corruptions."""

import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import transforms

B = 64


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  text = rng.integers(97, 123, (B, 12)).astype(np.int32)
  text[:, 8:] = 0  # padding
  return {
      'image': rng.integers(0, 256, (B, 16, 16, 1), dtype=np.uint8),
      'video': rng.integers(0, 256, (B, 4, 16, 16, 1), dtype=np.uint8),
      'audio': rng.standard_normal((B, 400)).astype(np.float32),
      'text': text,
      'label': rng.integers(0, 10, B).astype(np.int32),
      **{f'present/{m}': np.ones(B, np.bool_)
         for m in ('image', 'video', 'audio', 'text')},
  }


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_dropout_hides_at_the_rate_and_keeps_one_modality():
  batch = _batch()
  out = transforms.modality_dropout(
      batch, {'image': 1.0, 'audio': 1.0, 'text': 1.0, 'video': 1.0},
      transforms.batch_rng(0, 0))
  present = np.stack([out[f'present/{m}'] for m in ('image', 'audio', 'text',
                                                    'video')])
  assert (present.sum(0) == 1).all()  # all dropped: exactly one kept
  for m in ('image', 'audio', 'text', 'video'):
    hidden = ~out[f'present/{m}']
    assert not out[m][hidden].any()  # hidden data is zeroed
    np.testing.assert_array_equal(out[m][~hidden], batch[m][~hidden])
  half = transforms.modality_dropout(_batch(), {'audio': 0.5},
                                     transforms.batch_rng(0, 1))
  assert 0.3 < 1 - half['present/audio'].mean() < 0.7
  assert half['present/image'].all() and half['present/text'].all()
  assert batch['present/image'].all() and batch['image'].any()  # untouched


def test_dropout_never_revives_a_modality_already_absent():
  batch = _batch()
  batch['present/audio'] = np.zeros(B, np.bool_)
  out = transforms.modality_dropout(batch, {'image': 1.0, 'text': 1.0,
                                            'video': 1.0},
                                    transforms.batch_rng(0, 0))
  assert not out['present/audio'].any()
  kept = np.stack([out[f'present/{m}'] for m in ('image', 'text', 'video')])
  assert (kept.sum(0) == 1).all()


def test_transforms_are_deterministic_given_seed_and_batch_index():
  run = lambda i: transforms.corrupt(
      transforms.modality_dropout(_batch(), {'image': 0.3, 'text': 0.3},
                                  transforms.batch_rng(5, i)),
      'gaussian_noise', 3, ('image', 'audio'), transforms.batch_rng(5, i, 1))
  assert _same(run(7), run(7))
  assert not np.array_equal(run(7)['image'], run(8)['image'])


@pytest.mark.parametrize('kind,modalities', [
    ('gaussian_noise', ('image', 'audio', 'video')),
    ('occlusion', ('image', 'video')),
    ('scramble', ('text',)),
])
def test_corruption_grows_with_severity(kind, modalities):
  batch = _batch()
  assert _same(transforms.corrupt(batch, kind, 0, modalities,
                                  transforms.batch_rng(0, 0)), batch)
  for m in modalities:
    change = [np.mean(np.abs(transforms.corrupt(
        batch, kind, s, modalities, transforms.batch_rng(0, s))[m].astype(
            float) - batch[m])) for s in range(1, 6)]
    assert all(0 < a < b for a, b in zip(change, change[1:])), (m, change)
  out = transforms.corrupt(batch, kind, 5, modalities,
                           transforms.batch_rng(0, 0))
  assert all(out[m].dtype == batch[m].dtype for m in batch)


def test_audio_noise_has_the_severity_snr():
  batch = _batch()
  out = transforms.corrupt(batch, 'gaussian_noise', 4, 'audio',
                           transforms.batch_rng(0, 0))
  noise = out['audio'] - batch['audio']
  snr_db = 10 * np.log10(np.mean(batch['audio'] ** 2, 1) /
                         np.mean(noise ** 2, 1))
  np.testing.assert_allclose(snr_db, transforms.SNR_DB[4], atol=0.01)


def test_occlusion_is_the_same_in_every_frame_and_scramble_keeps_padding():
  batch = _batch()
  batch['video'] = np.maximum(batch['video'], 1)  # so 0 means occluded
  video = transforms.corrupt(batch, 'occlusion', 5, 'video',
                             transforms.batch_rng(0, 0))['video']
  zeroed = video == 0
  assert (zeroed == zeroed[:, :1]).all()
  assert np.mean(zeroed) == pytest.approx(transforms.OCCLUSION[5], abs=0.08)
  text = transforms.corrupt(batch, 'scramble', 5, 'text',
                            transforms.batch_rng(0, 0))['text']
  np.testing.assert_array_equal(text == 0, batch['text'] == 0)
  assert np.isin(text[text != 0], np.arange(97, 123)).all()


def test_drop_corruption_hides_by_severity_and_keeps_one():
  batch = _batch()
  out = transforms.corrupt(batch, 'drop', 5, ('image', 'audio', 'text',
                                              'video'),
                           transforms.batch_rng(0, 0))
  present = np.stack([out[f'present/{m}'] for m in ('image', 'audio', 'text',
                                                    'video')])
  assert (present.sum(0) == 1).all()
  out = transforms.corrupt(batch, 'drop', 2, 'text', transforms.batch_rng(0, 0))
  assert 0.2 < 1 - out['present/text'].mean() < 0.6


def test_bad_requests_are_user_errors():
  batch = _batch()
  rng = transforms.batch_rng(0, 0)
  with pytest.raises(errors.UserError, match='unknown corruption'):
    transforms.corrupt(batch, 'blur', 1, 'image', rng)
  with pytest.raises(errors.UserError, match='cannot corrupt'):
    transforms.corrupt(batch, 'occlusion', 1, 'text', rng)
  with pytest.raises(errors.UserError, match='severity'):
    transforms.corrupt(batch, 'scramble', 6, 'text', rng)
  with pytest.raises(errors.UserError, match='no modality'):
    transforms.modality_dropout(batch, {'tabular': 0.5}, rng)


def test_pad_or_crop_and_standardize():
  x = np.arange(10).reshape(2, 5)
  np.testing.assert_array_equal(transforms.pad_or_crop(x, 3), x[:, :3])
  np.testing.assert_array_equal(transforms.pad_or_crop(x, 7)[:, 5:], 0)
  crop = transforms.pad_or_crop(x, 3, rng=np.random.default_rng(1))
  assert crop.shape == (2, 3) and (np.diff(crop, axis=1) == 1).all()
  out = transforms.standardize({'audio': np.full((2, 3), 5.0)}, 'audio',
                               mean=1.0, std=2.0)
  assert out['audio'].dtype == np.float32 and (out['audio'] == 2.0).all()
