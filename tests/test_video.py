"""Video files through PyAV: the readers, the `video_folder` builder in each
CSV layout, and the manifest's video column and sound files."""

import csv
import fractions
import hashlib
import os

import av
import ml_collections
import numpy as np
import pytest
import soundfile

from mmfusion.data import manifest
from mmfusion.data import pipeline
from mmfusion.data import transforms
from mmfusion.data import video
from mmfusion.data import video_folder
from mmfusion.runtime import errors

FPS = 8  # frame k of a test clip is grey 16 * k + 8, shown from k / FPS s


def write_clip(path, *, frames=8, size=(32, 32), tone_hz=440.0,
               rate=22_050, audio=True, thirds=False):
  """An .mp4 (MPEG-4 video, AAC stereo sound) of `frames` frames at FPS:
  frame k uniform grey 16k + 8 (or, with `thirds`, its left, middle and right
  thirds red, green and blue), and a tone of `tone_hz` as long as the
  frames."""
  h, w = size
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('mpeg4', rate=FPS)
    stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
    stream.bit_rate = 4_000_000  # nearly lossless at 32x32
    if audio:  # every stream is added before the first packet
      sound = out.add_stream('aac', rate=rate)
      sound.layout = 'stereo'
    for k in range(frames):
      rgb = np.full((h, w, 3), 16 * k + 8, np.uint8)
      if thirds:
        rgb[:] = 0
        for i in range(3):
          rgb[:, i * w // 3:(i + 1) * w // 3, i] = 200
      frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
      frame.pts, frame.time_base = k, fractions.Fraction(1, FPS)
      out.mux(stream.encode(frame))
    out.mux(stream.encode())
    if audio:
      t = np.arange(round(frames / FPS * rate)) / rate
      wave = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
      frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]),
                                         format='fltp', layout='stereo')
      frame.sample_rate, frame.pts = rate, 0
      out.mux(sound.encode(frame))
      out.mux(sound.encode())
  return path


def write_sound(path, hz, rate=44_100, seconds=0.5):
  """A mono tone: WAV, FLAC and OGG by soundfile, MP3 and M4A by PyAV."""
  t = np.arange(round(rate * seconds)) / rate
  wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
  ext = os.path.splitext(str(path))[1]
  if ext in ('.wav', '.flac', '.ogg'):
    soundfile.write(str(path), wave, rate, **(
        {'format': 'OGG', 'subtype': 'VORBIS'} if ext == '.ogg' else {}))
    return path
  with av.open(str(path), 'w') as out:
    stream = out.add_stream({'.mp3': 'libmp3lame', '.m4a': 'aac'}[ext],
                            rate=rate)
    stream.layout = 'mono'
    frame = av.AudioFrame.from_ndarray(wave[None], format='fltp',
                                       layout='mono')
    frame.sample_rate, frame.pts = rate, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())
  return path


def frame_ids(video_T):
  """The index k of each frame of a test clip, from its grey level."""
  return np.rint((video_T.reshape(len(video_T), -1).mean(1) - 8) / 16).astype(
      int).tolist()


def peak_hz(wave_S, rate):
  return np.abs(np.fft.rfft(wave_S)).argmax() * rate / len(wave_S)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  return write_clip(tmp_path_factory.mktemp('clip') / 'a.mp4')


# ----------------------------------------------------------------- Readers ---
def test_frames_are_sampled_uniformly_in_time_in_order(clip):
  x = video.read_video(str(clip), frames=4, size=(16, 16))
  assert x.shape == (4, 16, 16, 3) and x.dtype == np.uint8
  # Middles of four quarters of 1 s: 0.125, 0.375, ... s -> frames 1, 3, 5, 7.
  assert frame_ids(x) == [1, 3, 5, 7]
  assert np.abs(x.astype(int) - np.array([24, 56, 88, 120])[:, None, None,
                                                            None]).max() <= 3
  # 16 frames of a clip that has 8: each shown twice, in order.
  assert frame_ids(video.read_video(str(clip), frames=16, size=(8, 8))) == [
      k // 2 for k in range(16)]
  assert frame_ids(video.read_video(str(clip), frames=2, size=(8, 8),
                                    start=0.5, end=1.0)) == [5, 7]
  assert frame_ids(video.read_video(str(clip), frames=3, size=(8, 8),
                                    start=0.25)) == [3, 5, 7]
  # Past the clip's end its last frame stays on screen.
  assert frame_ids(video.read_video(str(clip), frames=3, size=(8, 8),
                                    start=0.5, end=2.0)) == [6, 7, 7]
  assert video.sample_times(0, 1, 4).tolist() == [0.125, 0.375, 0.625, 0.875]


def test_crop_center_resize_and_pad(tmp_path):
  path = str(write_clip(tmp_path / 'wide.mp4', frames=2, size=(32, 48),
                        thirds=True, audio=False))

  def thirds_of(row_WxC):  # columns whose brightest channel is R, G, B
    return np.bincount(row_WxC.astype(int).argmax(-1), minlength=3).tolist()

  centre = video.read_video(path, frames=1, size=(16, 16), crop='center')[0]
  # 32x48 -> 16x24, its middle 16 columns: 4 red, 8 green, 4 blue.
  assert centre.shape == (16, 16, 3)
  assert thirds_of(centre[8]) == [4, 8, 4]
  stretched = video.read_video(path, frames=1, size=(16, 16), crop='resize')[0]
  assert all(4 <= n <= 7 for n in thirds_of(stretched[8]))  # 16 / 3 each
  assert thirds_of(stretched[8])[1] <= 6
  padded = video.read_video(path, frames=1, size=(16, 16), crop='pad')[0]
  # 32x48 -> 11x16 between black bands (rows 0-1 and 13-15).
  assert not padded[:2].any() and not padded[13:].any()
  assert (padded[2:13].max(-1) > 50).all()  # the picture, not black
  assert all(4 <= n <= 7 for n in thirds_of(padded[7]))
  with pytest.raises(ValueError, match="crop 'zoom'"):
    video.read_video(path, frames=1, size=(8, 8), crop='zoom')


def test_audio_track_is_resampled_cut_and_padded(clip):
  wave = video.read_audio_track(str(clip), sample_rate=16_000, samples=20_000)
  assert wave.shape == (20_000,) and wave.dtype == np.float32
  assert abs(peak_hz(wave[:16_000], 16_000) - 440) <= 2
  assert 0.45 < np.abs(wave[1000:15_000]).max() < 0.55  # channels averaged
  assert np.abs(wave[16_500:]).max() < 0.01  # 1 s of sound, then zeros
  part = video.read_audio_track(str(clip), sample_rate=8_000, samples=6_000,
                                start=0.25, end=0.75)
  assert abs(peak_hz(part[:4000], 8_000) - 440) <= 2
  assert abs(np.sqrt(np.mean(part[100:3900]**2)) - 0.5 / np.sqrt(2)) < 0.03
  assert not part[4000:].any()  # 0.5 s asked for, then zeros
  short = video.read_audio_track(str(clip), sample_rate=8_000, samples=800)
  assert short.shape == (800,) and np.abs(short[100:]).max() > 0.45


@pytest.mark.parametrize('ext', ['.wav', '.flac', '.ogg', '.mp3', '.m4a'])
def test_sound_files_are_resampled(tmp_path, ext):
  path = str(write_sound(tmp_path / f'tone{ext}', 660))
  wave = video.read_audio(path, 16_000, 10_000)
  assert wave.shape == (10_000,) and wave.dtype == np.float32
  assert abs(peak_hz(wave[:8000], 16_000) - 660) <= 2
  assert np.abs(wave[500:7500]).max() > 0.4  # 0.5 s of sound ...
  assert np.abs(wave[8200:]).max() < 0.02  # ... zero-padded
  assert np.array_equal(manifest.read_audio(path, 16_000, 10_000), wave) or (
      ext == '.wav')  # the manifest reads WAV itself


@pytest.mark.parametrize('codec, fmt', [('pcm_s16le', 's16'),
                                        ('pcm_u8', 'u8'), ('flac', 's32')])
def test_interleaved_and_integer_sound_tracks(tmp_path, codec, fmt):
  """Left: a tone at 0.5; right: silence; averaged to 0.25 whatever the
  layout (interleaved s16/u8, FLAC's 32-bit) FFmpeg decodes it to."""
  path = str(tmp_path / f'{codec}.mkv')
  rate = 11_025
  t = np.arange(rate // 2) / rate
  left = 0.5 * np.sin(2 * np.pi * 300 * t)
  with av.open(path, 'w') as out:
    stream = out.add_stream(codec, rate=rate)
    stream.layout = 'stereo'
    stream.format = fmt
    pcm = np.stack([left, 0 * left], -1)  # [n, C] interleaved
    pcm = (np.rint(pcm * 2**15).astype('<i2') if fmt == 's16' else
           np.rint(pcm * 127 + 128).astype(np.uint8) if fmt == 'u8' else
           np.rint(pcm * 2**31 * 0.99).astype('<i4'))
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format=fmt,
                                       layout='stereo')
    frame.sample_rate, frame.pts = rate, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())
  wave = video.read_audio(path, rate, rate // 2)
  assert abs(peak_hz(wave, rate) - 300) <= 2
  assert abs(np.abs(wave).max() - 0.25) < 0.01


def test_missing_silent_and_damaged_files(tmp_path, clip):
  silent = str(write_clip(tmp_path / 'silent.mp4', frames=2, audio=False))
  with pytest.raises(video.NoAudioTrack, match='no audio track'):
    video.read_audio_track(silent, sample_rate=8000, samples=8)
  assert issubclass(video.NoAudioTrack, manifest.MediaError)
  assert manifest.MediaError is video.MediaError
  data = open(clip, 'rb').read()
  (tmp_path / 'half.mp4').write_bytes(data[:len(data) // 2])
  (tmp_path / 'junk.mp4').write_bytes(b'not a video' * 20)
  for name, why in (('half.mp4', 'unreadable (Invalid data'),
                    ('junk.mp4', 'unreadable'), ('gone.mp4', 'file not found'),
                    ('tone.wav', 'no video stream')):
    if name == 'tone.wav':
      write_sound(tmp_path / name, 440)
    with pytest.raises(video.MediaError, match=r'^' + why.replace('(', r'\(')):
      video.read_video(str(tmp_path / name), frames=2, size=(8, 8))
  with pytest.raises(video.MediaError, match="start 3 s is past the clip's "
                     r'end \(1 s\)'):
    video.read_video(str(clip), frames=2, size=(8, 8), start=3)
  with pytest.raises(video.MediaError, match='empty'):
    video.read_video(str(clip), frames=2, size=(8, 8), start=0.6, end=0.2)
  with pytest.raises(video.MediaError, match='unreadable'):
    video.read_audio(str(tmp_path / 'junk.mp4'), 8000, 8)


# ------------------------------------------------------------ video_folder ---
def _folder_builder(data_dir, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'video_folder/default', 'data_dir': data_dir,
      'overrides': {'frames': 4, 'size': (8, 8), 'sample_rate': 8000,
                    'audio_samples': 8000, **overrides}}))


def _examples(builder):
  """{id: example + its split} over every split."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      ex = dict(source[i])
      out[ex['id'].decode()] = {**ex, 'split': split}
  return out


def _write_rows(path, rows, header=None):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    if header:
      writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def test_paths_layout_with_times_splits_and_a_silent_clip(tmp_path,
                                                         data_dir):
  clips = tmp_path / 'clips'
  (clips / 'sub').mkdir(parents=True)
  for i, hz in enumerate((300, 500, 700)):
    write_clip(clips / f'c{i}.mp4', tone_hz=hz)
  write_clip(clips / 'sub' / 'quiet.mp4', audio=False)
  csv_path = _write_rows(tmp_path / 'clips.csv', [
      ('c0.mp4', 'run', '', '', 'train'),
      ('c1.mp4', 'jump', '0.5', '', 'train'),
      ('sub/quiet.mp4', 'run', '', '', 'val'),
      ('c2.mp4', 'jump', '0', '0.5', 'test')],
      header=('path', 'label', 'start', 'end', 'split'))
  builder = _folder_builder(data_dir, csv=csv_path, folder=str(clips))
  pipeline.prepare(builder)
  features = builder.info.features
  assert features['label'].names == ['jump', 'run']
  assert features['video'].shape == (4, 8, 8, 3)
  assert features['video'].np_dtype == np.uint8
  assert features['audio'].shape == (8000,)
  assert {s: builder.info.splits[s].num_examples
          for s in builder.info.splits} == {'train': 2, 'validation': 1,
                                            'test': 1}
  ex = _examples(builder)
  assert {i: e['split'] for i, e in ex.items()} == {
      'c0.mp4': 'train', 'c1.mp4': 'train', 'sub/quiet.mp4': 'validation',
      'c2.mp4': 'test'}
  assert frame_ids(ex['c0.mp4']['video']) == [1, 3, 5, 7]
  assert frame_ids(ex['c1.mp4']['video']) == [4, 5, 6, 7]  # from 0.5 s
  assert frame_ids(ex['c2.mp4']['video']) == [0, 1, 2, 3]  # up to 0.5 s
  assert ex['c0.mp4']['label'] == 1 and ex['c1.mp4']['label'] == 0
  assert abs(peak_hz(ex['c0.mp4']['audio'], 8000) - 300) <= 2
  assert not ex['c2.mp4']['audio'][4000:].any()  # 0.5 s of sound
  assert abs(peak_hz(ex['c2.mp4']['audio'][:4000], 8000) - 700) <= 4
  quiet = ex['sub/quiet.mp4']
  assert quiet['present'] == {'video': True, 'audio': False}
  assert not quiet['audio'].any() and ex['c0.mp4']['present']['audio']
  batch = next(pipeline.eval_batches(builder.as_data_source(split='train'),
                                     batch_size=2,
                                     modalities=('video', 'audio')))
  assert batch['video'].shape == (2, 4, 8, 8, 3)
  assert batch['present/audio'].tolist() == [True, True]


def _unit(ident):
  return int.from_bytes(hashlib.sha1(ident.encode()).digest()[:8], 'big') / (
      2**64)


def test_kinetics_csv_names_clips_as_the_downloader_does(tmp_path, data_dir):
  clips = tmp_path / 'kinetics'
  rows, want = [], {}
  for i in range(8):
    label = ('abseiling', "massaging person's head")[i % 2]
    ytid = f'yt-{i}_x'
    start = 10 * i
    folder = clips / 'train' / label.replace(' ', '_')
    folder.mkdir(parents=True, exist_ok=True)
    write_clip(folder / f'{ytid}_{start:06d}_{start + 10:06d}.mp4', frames=4)
    split = 'val' if i >= 6 else 'train'
    rows.append((label, ytid, start, start + 10, split, 0))
    want[f'{ytid}_{start:06d}_{start + 10:06d}'] = (label, split)
  csv_path = _write_rows(tmp_path / 'train.csv', rows, header=(
      'label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc'))
  fractions_ = (0.5, 0.0, 0.5)
  builder = _folder_builder(data_dir, csv=(csv_path,), folder=str(clips),
                            with_audio=False, split_fractions=fractions_)
  pipeline.prepare(builder)
  assert 'audio' not in builder.info.features
  ex = _examples(builder)
  assert set(ex) == set(want)
  names = builder.info.features['label'].names
  assert names == ['abseiling', "massaging person's head"]
  for ident, (label, split) in want.items():
    # No test rows in the CSV: the train rows hashing below 0.5 are test.
    expected = 'validation' if split == 'val' else (
        'test' if _unit(ident) < 0.5 else 'train')
    assert ex[ident]['split'] == expected, ident
    assert names[ex[ident]['label']] == label
    assert ex[ident]['present'] == {'video': True}
  assert {e['split'] for e in ex.values()} == {'train', 'validation', 'test'}


def test_vggsound_csv_without_header(tmp_path, data_dir):
  clips = tmp_path / 'vggsound'
  clips.mkdir()
  rows = [('--abc', 30, 'bird chirping, tweeting', 'train'),
          ('x_y-z', 0, 'dog barking', 'train'),
          ('k', 5, 'dog barking', 'test'),
          ('q', 1, 'bird chirping, tweeting', 'train')]
  for ytid, start, _, _ in rows:
    write_clip(clips / f'{ytid}_{start:06d}.mp4', frames=2)
  csv_path = _write_rows(tmp_path / 'vggsound.csv', rows)
  builder = _folder_builder(data_dir, csv=csv_path, folder=str(clips),
                            split_fractions=(0.5, 0.5, 0.0))
  pipeline.prepare(builder)
  ex = _examples(builder)
  assert builder.info.features['label'].names == ['bird chirping, tweeting',
                                                  'dog barking']
  # train/test only: validation is the train rows whose id hashes below 0.5.
  assert _unit('q_000001') < 0.5 < min(_unit('--abc_000030'),
                                       _unit('x_y-z_000000'))
  assert {i: e['split'] for i, e in ex.items()} == {
      '--abc_000030': 'train', 'x_y-z_000000': 'train',
      'k_000005': 'test', 'q_000001': 'validation'}
  assert ex['k_000005']['label'] == 1 and ex['q_000001']['label'] == 0
  assert video_folder.detect_layout(['--abc', '30', 'dog', 'train']) == (
      'vggsound')
  assert video_folder.detect_layout(['label', 'youtube_id', 'time_start',
                                     'time_end', 'split']) == 'kinetics'
  assert video_folder.detect_layout(['a', 'b']) is None


def test_bad_rows_are_listed_then_skipped_and_reported(tmp_path, data_dir,
                                                       capsys):
  clips = tmp_path / 'clips'
  clips.mkdir()
  for name in ('a', 'b', 'c', 'd', 'e'):
    write_clip(clips / f'{name}.mp4', frames=2)
  (clips / 'junk.mp4').write_bytes(b'not a video' * 30)
  write_sound(clips / 'sound.m4a', 440)  # a file without video
  rows = [('a.mp4', 'x', '', 'train'),      # line 2: good
          ('gone.mp4', 'x', '', 'train'),   # 3: no such clip
          ('b.mp4', '', '', 'train'),       # 4: no label
          ('c.mp4', 'y', 'soon', 'train'),  # 5: bad start
          ('a.mp4', 'x', '', 'test'),       # 6: the id of line 2
          ('d.mp4', 'z', '', 'test'),       # 7: a class no train row has
          ('junk.mp4', 'x', '', 'train'),   # 8: undecodable
          ('sound.m4a', 'x', '', 'test'),   # 9: no video stream
          ('e.mp4', 'x', '', 'validation')]  # 10: good
  csv_path = _write_rows(tmp_path / 'clips.csv', rows,
                         header=('path', 'label', 'start', 'split'))
  with pytest.raises(errors.UserError) as e:
    pipeline.prepare(_folder_builder(data_dir, csv=csv_path,
                                     folder=str(clips)))
  message = str(e.value)
  assert '7 bad row(s)' in message and 'skip_bad_rows' in message
  reasons = {3: "clip 'gone.mp4': file not found", 4: 'no label',
             5: "start 'soon' is not a number of seconds",
             6: "id 'a.mp4' repeats clips.csv line 2",
             7: "label 'z' is not one of the classes (x)",
             8: 'clip: unreadable (Invalid data found when processing input)',
             9: 'clip: no video stream'}
  for line, why in reasons.items():
    assert f'clips.csv line {line} ({why})' in message
  assert message.index('line 3 (') < message.index('line 9 (')

  capsys.readouterr()
  builder = _folder_builder(data_dir, csv=csv_path, folder=str(clips),
                            skip_bad_rows=True)
  pipeline.prepare(builder)
  assert {s: builder.info.splits[s].num_examples
          for s in builder.info.splits} == {'train': 1, 'validation': 1}
  with open(os.path.join(builder.data_dir, video_folder.REPORT)) as f:
    report = [r.split('\t') for r in f.read().splitlines()]
  assert report[0] == ['file', 'line', 'id', 'reason']
  got = {int(line): why for _, line, _, why in report[1:]}
  assert got == reasons
  assert [int(r[1]) for r in report[1:]] == sorted(reasons)
  assert '7 bad row(s) were skipped' in capsys.readouterr().out


def test_options_that_cannot_work_are_one_sentence(tmp_path, data_dir):
  with pytest.raises(errors.UserError, match='needs its CSV'):
    _folder_builder(data_dir)
  csv_path = _write_rows(tmp_path / 'odd.csv', [('a', 'b')], header=('x', 'y'))
  with pytest.raises(errors.UserError, match='none of the layouts'):
    _folder_builder(data_dir, csv=csv_path)
  test_csv = _write_rows(tmp_path / 'test.csv', [('id', 1, 11, 'test')],
                         header=('youtube_id', 'time_start', 'time_end',
                                 'split'))
  with pytest.raises(errors.UserError, match="test.csv is unlabelled"):
    _folder_builder(data_dir, csv=test_csv)
  with pytest.raises(errors.UserError, match="crop 'zoom'"):
    _folder_builder(data_dir, csv=csv_path, crop='zoom')
  with pytest.raises(errors.UserError, match='no folder'):
    _folder_builder(data_dir, csv=csv_path, folder=str(tmp_path / 'none'))
  with pytest.raises(errors.UserError, match=r"clip_name '\{ytid\}.mp4' "
                     r"cannot be formed \(KeyError\('ytid'\)\); its fields "
                     r'are youtube_id, start, end, label, split'):
    _folder_builder(data_dir, csv=csv_path, clip_name='{ytid}.mp4')


# ---------------------------------------------------------------- manifest ---
def _manifest_builder(data_dir, path, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'manifest/default', 'data_dir': data_dir, 'overrides': {
          'path': str(path), 'video_frames': 4, 'video_size': (8, 8),
          'sample_rate': 8000, 'audio_samples': 4000, **overrides}}))


def _write_manifest(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  root = tmp_path_factory.mktemp('media')
  for i, hz in enumerate((300, 400, 500, 600)):
    write_clip(root / f'v{i}.mp4', tone_hz=hz)
  write_clip(root / 'quiet.mp4', audio=False)
  for ext, hz in (('.mp3', 900), ('.ogg', 1100), ('.wav', 700),
                  ('.flac', 1300)):
    write_sound(root / f'tone{ext}', hz, rate=22_050)
  return root


def test_manifest_video_column_and_sound_files(media, data_dir):
  path = _write_manifest(media / 'm.csv', [
      {'id': 'a', 'video': 'v0.mp4', 'audio': 'tone.mp3', 'start': '',
       'end': '', 'label': 'p', 'split': 'train'},
      {'id': 'b', 'video': 'v1.mp4', 'audio': 'tone.ogg', 'start': '0.5',
       'end': '', 'label': 'q', 'split': 'train'},
      {'id': 'c', 'video': 'v2.mp4', 'audio': 'tone.flac', 'start': '0',
       'end': '0.5', 'label': 'p', 'split': 'test'},
      {'id': 'd', 'video': 'v3.mp4', 'audio': 'tone.wav', 'start': '',
       'end': '', 'label': 'q', 'split': 'validation'}])
  builder = _manifest_builder(data_dir, path)
  pipeline.prepare(builder)
  features = builder.info.features
  assert features['video'].shape == (4, 8, 8, 3)
  assert features['video'].np_dtype == np.uint8
  assert 'tabular' not in features  # start and end are no numbers of it
  ex = _examples(builder)
  assert frame_ids(ex['a']['video']) == [1, 3, 5, 7]
  assert frame_ids(ex['b']['video']) == [4, 5, 6, 7]
  assert frame_ids(ex['c']['video']) == [0, 1, 2, 3]
  for ident, hz in (('a', 900), ('b', 1100), ('c', 1300), ('d', 700)):
    assert ex[ident]['audio'].shape == (4000,)
    assert abs(peak_hz(ex[ident]['audio'], 8000) - hz) <= 2, ident
    assert ex[ident]['present'] == {'audio': True, 'video': True}


def test_manifest_audio_from_video_and_silent_clips(media, data_dir):
  rows = [{'id': f'r{i}', 'video': f'v{i}.mp4', 'start': '',
           'label': 'pq'[i % 2], 'split': 'train'} for i in range(4)]
  rows.append({'id': 'q', 'video': 'quiet.mp4', 'start': '', 'label': 'p',
               'split': 'train'})
  rows.append({'id': 'g', 'video': 'gone.mp4', 'start': '', 'label': 'p',
               'split': 'test'})
  rows.append({'id': 'n', 'video': 'v0.mp4', 'start': '-1', 'label': 'p',
               'split': 'test'})
  path = _write_manifest(media / 'av.csv', rows)
  with pytest.raises(errors.UserError) as e:
    pipeline.prepare(_manifest_builder(data_dir, path, audio_from_video=True))
  message = str(e.value)
  assert '3 bad row(s)' in message
  assert ("line 6 (audio of video 'quiet.mp4': no audio track (set "
          "allow_missing=True") in message
  # A missing clip is said once, not again for its sound.
  assert "line 7 (video 'gone.mp4': file not found)" in message
  assert "line 8 (start '-1' is not a number of seconds)" in message
  builder = _manifest_builder(data_dir, path, audio_from_video=True,
                              allow_missing=True, skip_bad_rows=True)
  pipeline.prepare(builder)
  ex = _examples(builder)
  assert set(ex) == {'r0', 'r1', 'r2', 'r3', 'q'}
  assert ex['q']['present'] == {'audio': False, 'video': True}
  assert not ex['q']['audio'].any()
  for i, hz in enumerate((300, 400, 500, 600)):
    assert abs(peak_hz(ex[f'r{i}']['audio'], 8000) - hz) <= 2
    assert frame_ids(ex[f'r{i}']['video']) == [1, 3, 5, 7]
  with pytest.raises(errors.UserError, match='has an audio column'):
    _manifest_builder(data_dir, _write_manifest(media / 'both.csv', [
        {'video': 'v0.mp4', 'audio': 'tone.wav', 'label': 'p'}]),
                      audio_from_video=True)
  with pytest.raises(errors.UserError, match='video_crop'):
    _manifest_builder(data_dir, path, video_crop='zoom')


def test_dropout_and_corruptions_work_on_video(media, data_dir):
  path = _write_manifest(media / 'drop.csv', [
      {'id': f'r{i}', 'video': f'v{i}.mp4', 'audio': 'tone.wav',
       'label': 'pq'[i % 2], 'split': 'train'} for i in range(4)])
  builder = _manifest_builder(data_dir, path)
  pipeline.prepare(builder)
  batch = next(pipeline.eval_batches(builder.as_data_source(split='train'),
                                     batch_size=4,
                                     modalities=('video', 'audio')))
  assert batch['video'].shape == (4, 4, 8, 8, 3)
  rng = np.random.default_rng(0)
  dropped = transforms.modality_dropout(batch, {'video': 1.0}, rng)
  # Every example loses its video (it keeps its audio), zeroed.
  assert not dropped['present/video'].any()
  assert dropped['present/audio'].all() and not dropped['video'].any()
  assert batch['video'].any() and batch['present/video'].all()  # untouched
  noisy = transforms.corrupt(batch, 'gaussian_noise', 3, 'video', rng)
  assert noisy['video'].dtype == np.uint8
  assert noisy['video'].shape == batch['video'].shape
  assert 5 < np.abs(noisy['video'].astype(int) - batch['video']).mean() < 60
  hidden = transforms.corrupt(batch, 'occlusion', 5, ['video'], rng)
  zero_BxFxHxW = (hidden['video'] == 0).all(-1) & (batch['video'] > 0).all(-1)
  assert zero_BxFxHxW.any()
  # The rectangle is the same in every frame of a clip.
  assert (zero_BxFxHxW == zero_BxFxHxW[:, :1]).all()
  np.testing.assert_array_equal(hidden['audio'], batch['audio'])


@pytest.mark.slow  # a whole run of the loop on tiny clips
def test_a_video_manifest_trains_end_to_end(media, data_dir, tmp_path):
  """Video + its own sound track through the loop: trained a few steps,
  evaluated on validation and test."""
  from mmfusion import train
  from mmfusion.configs import av_digits
  rows = [{'id': f'{split}{i}', 'video': f'v{i % 4}.mp4',
           'label': 'pq'[i % 2], 'split': split}
          for split, n in (('train', 8), ('validation', 4), ('test', 4))
          for i in range(n)]
  path = _write_manifest(tmp_path / 'train.csv', [
      {**r, 'video': str(media / r['video'])} for r in rows])
  config = av_digits.get_config('video,runlocal')
  config.data.name = 'manifest/default'
  config.data.data_dir = data_dir
  config.data.overrides = {
      'path': str(path), 'video_frames': 4, 'video_size': (16, 16),
      'audio_from_video': True, 'sample_rate': 8000, 'audio_samples': 4000}
  config.data.modalities = ('video', 'audio')
  config.model.fusion = 'concat'
  config.model.encoders = {  # the encoders' smallest sizes: a quick compile
      'video': {'name': 'video_pool', 'features': 16,
                'frame_options': {'channels': (8,)}},
      'audio': {'name': 'audio_cnn', 'features': 16, 'channels': (8,),
                'hop': 160, 'n_mels': 16}}
  config.batch_size, config.total_steps, config.num_devices = 4, 4, 1
  config.eval_every = config.checkpoint_every = 4
  config.optimizer.warmup_steps = 1
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['step'] == 4
  for split in ('validation', 'test'):
    assert np.isfinite(results[split]['loss'])
    assert 0 <= results[split]['accuracy'] <= 1

  # The trained model predicts from the clip file as evaluation did from the
  # built example (its sound given as the built waveform).
  import mmfusion
  from mmfusion.data import pipeline
  model = mmfusion.load(workdir)
  source = pipeline.get_builder(config.data).as_data_source(split='test')
  ex = source[1]
  clip = str(media / f'v{int(ex["id"].decode()[4:]) % 4}.mp4')
  batch = next(pipeline.eval_batches(source, batch_size=2,
                                     modalities=('video', 'audio')))
  evaluated = np.asarray(model.apply_batch(batch)['probabilities'])[1]
  predicted = model.predict([{'video': clip, 'audio': ex['audio']}])
  np.testing.assert_allclose(predicted.probabilities[0], evaluated,
                             atol=1e-6)


def test_video_folder_config_builds_a_model():
  from mmfusion import build
  from mmfusion import models
  from mmfusion.configs import video_folder as config_lib
  for arg, modalities in (('', ('video', 'audio')), ('video', ('video',)),
                          ('audio,runlocal', ('audio',))):
    config = config_lib.get_config(arg)
    build.check_config(config)
    assert config.data.modalities == modalities
    assert config.data.overrides['with_audio'] == ('audio' in modalities)
    model = models.from_config(config.model, num_outputs=5)
    assert set(model.encoders) == set(modalities)
  config = config_lib.get_config('csv=a.csv+b.csv,frames=8,size=32,seconds=2')
  assert config.data.overrides['csv'] == ('a.csv', 'b.csv')
  assert config.data.overrides['frames'] == 8
  assert config.data.overrides['size'] == (32, 32)
  assert config.data.overrides['audio_samples'] == 32_000
  for bad in ('image', 'frames=many', 'clips=x'):
    with pytest.raises(ValueError, match='config arg'):
      config_lib.get_config(bad)


@pytest.mark.slow  # a whole run of the loop on tiny clips
def test_video_folder_config_trains_on_a_paths_csv(tmp_path, data_dir):
  from mmfusion import train
  from mmfusion.configs import video_folder as config_lib
  clips = tmp_path / 'clips'
  clips.mkdir()
  rows = []
  for i in range(12):
    write_clip(clips / f'c{i}.mp4', tone_hz=300 + 200 * (i % 2))
    rows.append((f'c{i}.mp4', 'ab'[i % 2],
                 ('train', 'train', 'val', 'test')[i % 4]))
  csv_path = _write_rows(tmp_path / 'clips.csv', rows,
                         header=('path', 'label', 'split'))
  config = config_lib.get_config(f'runlocal,csv={csv_path},folder={clips}')
  config.data.data_dir = data_dir
  config.data.overrides = {**config.data.overrides, 'frames': 4,
                           'size': (16, 16), 'audio_samples': 8000}
  config.batch_size, config.total_steps, config.num_devices = 2, 2, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 2 and results['test']['examples'] == 3
  assert np.isfinite(results['test']['loss'])
