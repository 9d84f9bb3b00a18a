"""The av_digits builder: tiny builds, determinism, held-out voices, noise."""

import difflib

import ml_collections
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import av_digits
from mmfusion.data import pipeline
from mmfusion.data import speech
from mmfusion.data import tokenizer
from mmfusion.data import tuxpaint

TINY = {'num_train': 40, 'num_validation': 8, 'num_test': 12,
        'num_test_shift': 8, 'train_speakers': 4, 'eval_speakers': 2,
        'audio_samples': 8000, 'text_length': 12}
TINY_VIDEO = {**TINY, 'audio_samples': 16_000, 'num_test_shift': 0}


def _built(name, data_dir, **overrides):
  builder = pipeline.get_builder(ml_collections.ConfigDict({
      'name': f'av_digits/{name}', 'data_dir': data_dir,
      'overrides': overrides}))
  pipeline.prepare(builder)
  return builder


def _arrays(builder, split):
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  return {k: np.stack([np.asarray(e[k]) for e in examples])
          for k in examples[0]}


@pytest.fixture(scope='module')
def noisy(data_dir):
  return _built('noisy', data_dir, **TINY)


def test_shapes_dtypes_and_splits(noisy):
  sizes = {s: noisy.info.splits[s].num_examples for s in noisy.info.splits}
  assert sizes == {'train': 40, 'validation': 8, 'test': 12, 'test_shift': 8}
  train = _arrays(noisy, 'train')
  assert train['image'].shape == (40, 28, 28, 1)
  assert train['image'].dtype == np.uint8
  assert train['audio'].shape == (40, 8000)
  assert train['audio'].dtype == np.float32
  assert train['text'].shape == (40, 12) and train['text'].dtype == np.int32
  assert np.abs(train['audio']).max() <= 1.0
  assert noisy.info.features['label'].names[7] == 'seven'
  batch = next(pipeline.eval_batches(noisy.as_data_source(split='test'),
                                     batch_size=8,
                                     modalities=('image', 'audio', 'text')))
  assert batch['label'].dtype == np.int32 and batch['present/text'].all()
  # test_shift holds the scikit-learn digits, not MNIST's.
  shift_images = av_digits.sklearn_digits()[0]
  shifted = _arrays(noisy, 'test_shift')
  clean = shifted['image'][~shifted['corrupted'][:, 0], ..., 0]
  assert all((shift_images == im).all(axis=(1, 2)).any() for im in clean)


def test_held_out_voices_are_not_in_train(noisy):
  names = av_digits.voice_names()
  variant = lambda split: {names[v].split('+')[1]
                           for v in _arrays(noisy, split)['voice']}
  train = variant('train')
  for split in ('validation', 'test', 'test_shift'):
    assert not train & variant(split), split
  assert variant('test') <= set(speech.HELD_OUT_VARIANTS['test'])
  assert not set(speech.voices('train')) & set(speech.voices('test'))


def test_building_twice_gives_identical_examples(noisy, tmp_path):
  again = _built('noisy', str(tmp_path), **TINY)
  for split in ('train', 'test_shift'):
    a, b = _arrays(noisy, split), _arrays(again, split)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'{split}/{k}')


def test_noisy_wrecks_one_or_two_modalities_per_example(noisy):
  ex = _arrays(noisy, 'train')
  hit = ex['corrupted']
  assert set(hit.sum(1)) == {1, 2} and hit.any(0).all()
  # Occluded images are mostly clutter; clean MNIST is mostly black.
  busy = np.mean(ex['image'] > 0, axis=(1, 2, 3))
  assert busy[hit[:, 0]].min() > busy[~hit[:, 0]].max()
  # Speech under noise at <= -18 dB is far louder than clean speech.
  rms = np.sqrt(np.mean(ex['audio'] ** 2, axis=1))
  assert np.median(rms[hit[:, 1]]) > 4 * np.median(rms[~hit[:, 1]])
  # Scrambled text is random letters, clean text is close to the digit's word.
  texts = tokenizer.ByteTokenizer().decode(ex['text'])
  likeness = np.asarray([max(
      difflib.SequenceMatcher(None, t.lower(), words[y]).ratio()
      for words in av_digits.WORDS.values()) for t, y in zip(texts,
                                                            ex['label'])])
  assert likeness[~hit[:, 2]].mean() > likeness[hit[:, 2]].mean() + 0.3
  assert all(t.isalpha() and t.islower() for t in np.asarray(texts)[
      hit[:, 2]])


@pytest.fixture(scope='module')
def video(data_dir):
  return _built('video', data_dir, **TINY_VIDEO)


def test_video_speaks_each_digit_while_it_is_visible(video):
  ex = _arrays(video, 'train')
  assert ex['video'].shape == (40, 8, 32, 32, 1) and ex['digits'].shape == (
      40, 2)
  np.testing.assert_array_equal(ex['label'], ex['sync'])
  assert 0 < ex['sync'].mean() < 1
  visible_BxT = ex['video'].reshape(40, 8, -1).max(-1) > 0
  frames_BxTxS = ex['audio'].reshape(40, 8, -1)
  energy_BxT = np.sqrt(np.mean(frames_BxTxS ** 2, -1))
  loud_BxT = energy_BxT > 0.25 * energy_BxT.max(1, keepdims=True)
  inside = ~(loud_BxT & ~visible_BxT).any(1)  # every loud frame visible
  assert inside[ex['sync'] == 1].all()
  assert inside[ex['sync'] == 0].mean() < 0.5


def test_video_labels_are_the_set_of_digits_in_the_clip(video, noisy):
  feature = video.info.features['labels']
  assert feature.shape == (10,) and feature.np_dtype == np.bool_
  assert video.target_names() == {'labels': (
      'zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
      'nine')}
  assert noisy.target_names() == {} and 'labels' not in noisy.info.features
  for split in ('train', 'test'):
    ex = _arrays(video, split)
    assert ex['labels'].dtype == np.bool_
    for labels, digits in zip(ex['labels'], ex['digits']):
      assert set(np.flatnonzero(labels)) == set(digits.tolist())
  assert set(ex['labels'].sum(1)) <= {1, 2}


def test_impossible_configs_are_user_errors(data_dir):
  with pytest.raises(errors.UserError, match='num_corrupted'):
    pipeline.get_builder(ml_collections.ConfigDict({
        'name': 'av_digits/noisy', 'data_dir': data_dir,
        'overrides': {'num_corrupted': (0, 3)}}))
  with pytest.raises(errors.UserError, match='do not fit'):
    pipeline.get_builder(ml_collections.ConfigDict({
        'name': 'av_digits/video', 'data_dir': data_dir,
        'overrides': {'num_digits': 4}}))


# A stand-in for Tux Paint's stamps, in the package's layout: two "voices"
# whose digit N is a tone of its own pitch, at the package's two rates.
TONE_HZ = [300 + 90 * d for d in range(10)]


@pytest.fixture(scope='module')
def stamps(tmp_path_factory):
  import soundfile
  root = tmp_path_factory.mktemp('tuxpaint')
  math = root / tuxpaint.STAMPS / 'symbols' / 'math'
  math.mkdir(parents=True)
  for voice, rate in (('{}.ogg', 11_025), ('{}_en_GB.ogg', 44_100)):
    t = np.arange(int(0.4 * rate)) / rate
    for d, hz in enumerate(TONE_HZ):
      wave = 0.5 * np.sin(2 * np.pi * hz * t) * np.hanning(len(t))
      soundfile.write(str(math / voice.format(d)), wave, rate, format='OGG',
                      subtype='VORBIS')
  return root


def test_speech_shift_split_speaks_with_the_stamps_voices(data_dir, stamps):
  built = _built('clean', data_dir, **TINY, speech_shift_dir=str(stamps),
                 num_test_speech_shift=20)
  assert built.info.splits['test_speech_shift'].num_examples == 20
  shift, test = _arrays(built, 'test_speech_shift'), _arrays(built, 'test')
  names = av_digits.voice_names()
  assert {names[v] for v in shift['voice']} <= set(tuxpaint.DIGIT_VOICES)
  # Images and text come from the test split's pools; the audio is the tone
  # of the example's digit, resampled to 16 kHz.
  mnist_test = av_digits.mnist_splits()['test'][0]
  assert all((mnist_test == im).all(axis=(1, 2)).any()
             for im in shift['image'][..., 0])
  spectra = np.abs(np.fft.rfft(shift['audio'], axis=1))
  peak_hz = spectra.argmax(1) * av_digits.SAMPLE_RATE / shift['audio'].shape[1]
  np.testing.assert_allclose(peak_hz, np.take(TONE_HZ, shift['label']), atol=8)
  assert not {names[v] for v in test['voice']} & set(tuxpaint.DIGIT_VOICES)
  # Without the folder there is no such split, and the others are unchanged.
  plain = _built('clean', data_dir, **TINY)
  assert 'test_speech_shift' not in plain.info.splits
  np.testing.assert_array_equal(_arrays(plain, 'test')['audio'], test['audio'])


def test_missing_stamps_are_one_sentence(data_dir, stamps, tmp_path):
  with pytest.raises(errors.UserError, match='make tuxpaint'):
    _built('clean', data_dir, **TINY, speech_shift_dir=str(tmp_path))
  with pytest.raises(errors.UserError, match='video variant'):
    _built('video', data_dir, **TINY_VIDEO, speech_shift_dir=str(stamps))
  partial = tmp_path / 'partial' / 'symbols' / 'math'
  partial.mkdir(parents=True)
  (partial / '3.ogg').write_bytes((stamps / tuxpaint.STAMPS / 'symbols' /
                                   'math' / '3.ogg').read_bytes())
  with pytest.raises(errors.UserError, match=r'lack 19 spoken digits \(0.ogg'):
    tuxpaint.spoken_digits(str(tmp_path / 'partial'), 16_000)


def test_config_evaluates_on_the_speech_shift_when_asked():
  from mmfusion.configs import av_digits as config_lib
  config = config_lib.get_config('audio,speech_shift')
  assert config.data.extra_eval_splits == ('test_shift', 'test_speech_shift')
  assert config.data.overrides['speech_shift_dir'] == tuxpaint.DEFAULT_DIR
  assert config.data.modalities == ('audio',)
  other = config_lib.get_config('clean,speech_shift=/data/stamps')
  assert other.data.overrides['speech_shift_dir'] == '/data/stamps'
  with pytest.raises(ValueError, match='not with video'):
    config_lib.get_config('video,speech_shift')
