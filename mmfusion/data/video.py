"""Reading video clips and sound files, with PyAV (FFmpeg) and soundfile.

  read_video(path, frames=16, size=(64, 64))     uint8 [T, H, W, 3] (RGB)
  read_audio_track(path, sample_rate=16_000, samples=16_000)
                                                 float32 [S]: a clip's sound
  read_audio(path, sample_rate, samples)         float32 [S]: a sound file

Time. `start` and `end` are seconds from the start of the file (the earliest
of its streams); None means the clip's start, or its end. Frames are sampled
uniformly in time: [start, end] is cut into `frames` equal parts, and frame i
is the one on screen at the middle of part i (the last decoded frame shown at
or before that time; the first frame for a time before it). So a window
holding fewer decoded frames than asked repeats frames, in time order (a
1-s clip at 8 fps read as 16 frames gives each frame twice), and times past
the last frame repeat it.

Size. `crop` 'center' scales a frame to cover H x W (aspect kept) and cuts out
the middle; 'resize' stretches it to H x W; 'pad' fits it inside H x W (aspect
kept) and pads with black. Scaling is FFmpeg's (swscale, bilinear).

Sound. A clip's first audio stream over [start, end] (the whole of it when
`end` is None), its channels averaged, resampled to `sample_rate` by FFmpeg's
resampler (`av.AudioResampler`), cut or zero-padded at the end to `samples`. `read_audio` reads WAV, FLAC and OGG files with soundfile
(libsndfile; resampled by `speech.resample`) and every other type (MP3,
M4A/AAC, Opus, a video's sound track) through PyAV.

Errors. A file that is missing, damaged, or lacks the stream asked for raises
`MediaError` with a short reason (the manifest's `MediaError` is this class);
a clip without sound raises its subclass `NoAudioTrack`, which a caller that
allows gaps turns into an absent modality (`present/audio` False).

Shape legend: T frames, H height, W width, S samples.
"""

import os

import av
import numpy as np

from mmfusion.data import speech

CROPS = ('center', 'resize', 'pad')
SOUNDFILE_TYPES = ('.wav', '.flac', '.ogg', '.oga')  # read by libsndfile
EPSILON = 1e-6  # seconds: a frame shown exactly at a sample time is that one
# What PyAV raises on a damaged file: FFmpegError (InvalidDataError is also a
# ValueError), OSError, and EOFError for a stream cut short.
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError)


class MediaError(Exception):
  """A file that is missing, unreadable or of the wrong shape."""


class NoAudioTrack(MediaError):
  """A video file without a sound track."""


def fit_length(wave_S, samples: int) -> np.ndarray:
  """float32 [samples]: `wave_S` cut, or zero-padded at the end."""
  out = np.zeros(samples, np.float32)
  out[:min(len(wave_S), samples)] = wave_S[:samples]
  return out


def _reason(e: Exception) -> str:
  """FFmpeg's words for an error, without the file name PyAV appends."""
  return getattr(e, 'strerror', None) or str(e) or type(e).__name__


def _open(path: str):
  if not os.path.isfile(path):
    raise MediaError('file not found')
  try:
    return av.open(path, metadata_errors='ignore')
  except _AV_ERRORS as e:
    raise MediaError(f'unreadable ({_reason(e)})') from None


def _origin(container) -> float:
  """Seconds at which the file's earliest stream starts."""
  start = container.start_time  # in av.time_base units, or None
  return 0.0 if start is None else start / av.time_base


def _window(start, end):
  """(lo, hi) seconds of the window asked for; hi is None for the end."""
  lo = 0.0 if start is None else float(start)
  hi = None if end is None else float(end)
  if lo < 0 or hi is not None and hi <= lo:
    raise MediaError(f'the window {lo:g}..{"end" if hi is None else f"{hi:g}"}'
                     f' s is empty (start must be >= 0 and before end)')
  return lo, hi


def _seek(container, stream, seconds: float):
  """Jumps to the keyframe at or before `seconds` (from the file's start)."""
  if seconds > 0:
    container.seek(int((seconds + _origin(container)) / stream.time_base),
                   stream=stream, backward=True)


# ------------------------------------------------------------------ Frames ---
def _duration(container, stream) -> float | None:
  """Seconds of the video stream, from the file's header (None: unknown)."""
  if stream.duration is not None and stream.time_base is not None:
    first = stream.start_time or 0
    return float((first + stream.duration) * stream.time_base) - _origin(
        container)
  if container.duration is not None:
    return container.duration / av.time_base
  return None


def _rgb(frame, size, crop: str, scaler) -> np.ndarray:
  """uint8 [H, W, 3] of one decoded frame, scaled as `crop` says by
  `scaler` (a VideoReformatter, whose scaling context is reused)."""
  h_out, w_out = size
  to_rgb = lambda w, h: scaler.reformat(frame, width=w, height=h,
                                        format='rgb24').to_ndarray()
  if crop == 'resize':
    return to_rgb(w_out, h_out)
  fit = (max if crop == 'center' else min)(h_out / frame.height,
                                           w_out / frame.width)
  h, w = (max(1, round(frame.height * fit)), max(1, round(frame.width * fit)))
  if crop == 'center':
    h, w = max(h, h_out), max(w, w_out)
    x = to_rgb(w, h)
    top, left = (h - h_out) // 2, (w - w_out) // 2
    return np.ascontiguousarray(x[top:top + h_out, left:left + w_out])
  h, w = min(h, h_out), min(w, w_out)
  out = np.zeros((h_out, w_out, 3), np.uint8)
  top, left = (h_out - h) // 2, (w_out - w) // 2
  out[top:top + h, left:left + w] = to_rgb(w, h)
  return out


def sample_times(lo: float, hi: float, frames: int) -> np.ndarray:
  """float64 [T]: the middles of `frames` equal parts of [lo, hi]."""
  return lo + (np.arange(frames) + 0.5) * (hi - lo) / frames


def pick_frames(decoded, times_T, origin: float, convert) -> list:
  """[T] `convert(frame)` of the frame on screen at each of `times_T`
  (seconds, ascending), read from the iterator `decoded` only as far as the
  last time needs; a frame picked twice is converted once."""
  picked, shown = [], None  # shown: the last frame decoded before `t`
  for frame in decoded:
    t = None if frame.time is None else frame.time - origin
    while (len(picked) < len(times_T) and t is not None and
           t > times_T[len(picked)] + EPSILON):
      picked.append(frame if shown is None else shown)  # before the first
    if len(picked) == len(times_T):
      break
    shown = frame
  if shown is None and not picked:
    raise MediaError('no video frames (in the window asked for)')
  picked += [shown] * (len(times_T) - len(picked))  # the last stays on
  arrays = {}
  for frame in picked:
    if id(frame) not in arrays:
      arrays[id(frame)] = convert(frame)
  return [arrays[id(frame)] for frame in picked]


def probe_video(path: str):
  """Returns when the file has a video stream whose first frame decodes;
  MediaError saying why not otherwise (cheaper than `read_video`)."""
  with _open(path) as container:
    if not container.streams.video:
      raise MediaError('no video stream')
    try:
      for _ in container.decode(container.streams.video[0]):
        return
    except _AV_ERRORS as e:
      raise MediaError(f'undecodable ({_reason(e)})') from None
  raise MediaError('no video frames')


def read_video(path: str, *, frames: int, size, start=None, end=None,
               crop: str = 'center') -> np.ndarray:
  """uint8 [frames, H, W, 3] RGB frames of the clip at `path`, sampled
  uniformly over [start, end] seconds (see the module docstring)."""
  if crop not in CROPS:
    raise ValueError(f'crop {crop!r} is not one of {", ".join(CROPS)}')
  size = tuple(int(s) for s in size)
  with _open(path) as container:
    if not container.streams.video:
      raise MediaError('no video stream')
    stream = container.streams.video[0]
    origin = _origin(container)
    lo, hi = _window(start, end)
    if hi is None:
      hi = _duration(container, stream)
    if hi is None:  # no duration in the header: the last frame's end
      hi = _decoded_end(container, stream, origin)
      container.seek(0)
    if hi <= lo:
      raise MediaError(f'start {lo:g} s is past the clip\'s end ({hi:g} s)')
    _seek(container, stream, lo)
    scaler = av.video.reformatter.VideoReformatter()
    try:
      picked = pick_frames(container.decode(stream),
                           sample_times(lo, hi, frames), origin,
                           lambda f: _rgb(f, size, crop, scaler))
    except _AV_ERRORS as e:
      raise MediaError(f'undecodable ({_reason(e)})') from None
  return np.stack(picked)


def _decoded_end(container, stream, origin) -> float:
  """Seconds at which the last frame stops showing, by decoding them all."""
  times = [f.time - origin for f in container.decode(stream)
           if f.time is not None]
  if not times:
    raise MediaError('no video frames')
  step = float(np.median(np.diff(times))) if len(times) > 1 else (
      1 / float(stream.average_rate or 25))
  return times[-1] + step


# ------------------------------------------------------------------- Sound ---
def read_audio_track(path: str, *, sample_rate: int, samples: int,
                     start=None, end=None) -> np.ndarray:
  """float32 [samples] mono sound of the file's first audio stream over
  [start, end] seconds, at `sample_rate`; NoAudioTrack when it has none."""
  with _open(path) as container:
    if not container.streams.audio:
      raise NoAudioTrack('no audio track')
    stream = container.streams.audio[0]
    lo, hi = _window(start, end)
    _seek(container, stream, lo)
    try:
      wave_S = _decode_sound(container, stream, sample_rate, lo, hi, samples)
    except _AV_ERRORS as e:
      raise MediaError(f'undecodable sound ({_reason(e)})') from None
  return fit_length(wave_S, samples)


def _decode_sound(container, stream, rate, lo, hi, samples) -> np.ndarray:
  """float32 mono samples at `rate` from `lo` seconds to `hi` (None: to the
  end, or until `samples` are there)."""
  origin, chunks, first, have, source_rate = _origin(container), [], None, 0, 0
  for frame in container.decode(stream):
    t = (frame.time - origin) if frame.time is not None else None
    if first is None:
      first, source_rate = (lo if t is None else t), frame.sample_rate
    if hi is not None and t is not None and t >= hi:
      break
    chunks.append(samples_of(frame))
    have += chunks[-1].shape[1]
    if hi is None and have >= (lo - first + samples / rate) * source_rate:
      break
  if first is None:
    raise MediaError('no sound in the audio track (in the window asked for)')
  wave = np.concatenate(chunks, 1).mean(0, dtype=np.float32)  # channels
  skip = round((lo - first) * source_rate)  # < 0: the sound starts after lo
  wave = wave[skip:] if skip >= 0 else np.concatenate(
      [np.zeros(-skip, np.float32), wave])
  if hi is not None:
    wave = wave[:round((hi - lo) * source_rate)]
  return resample(wave, source_rate, rate)


def samples_of(frame) -> np.ndarray:
  """float32 [C, n] of a decoded audio frame, planar or interleaved; integer
  samples scaled to [-1, 1)."""
  x, channels = frame.to_ndarray(), len(frame.layout.channels)
  x = x.reshape(channels, -1) if frame.format.is_planar else (
      x.reshape(-1, channels).T)
  if x.dtype.kind == 'u':
    return (x.astype(np.float32) - 128) / 128
  if x.dtype.kind == 'i':
    return x.astype(np.float32) / np.float32(2.0**(8 * x.dtype.itemsize - 1))
  return x.astype(np.float32, copy=False)


def resample(wave, rate_in: int, rate_out: int) -> np.ndarray:
  """float32 mono `wave` from `rate_in` to `rate_out` Hz by FFmpeg's
  resampler, in one call rather than a decoded frame at a time (its cost per
  call outweighs a short frame's)."""
  if rate_in == rate_out or not len(wave):
    return np.asarray(wave, np.float32)
  frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None]),
                                     format='fltp', layout='mono')
  frame.sample_rate = rate_in
  resampler = av.AudioResampler(format='fltp', layout='mono', rate=rate_out)
  out = resampler.resample(frame) + resampler.resample(None)
  return np.concatenate([f.to_ndarray()[0] for f in out]).astype(np.float32)


def read_audio(path: str, sample_rate: int, samples: int) -> np.ndarray:
  """float32 [samples] mono wave at `sample_rate` of a sound file: WAV, FLAC
  and OGG by soundfile, any other type (MP3, M4A, Opus, a video) by PyAV."""
  if not os.path.isfile(path):
    raise MediaError('file not found')
  if os.path.splitext(path)[1].lower() not in SOUNDFILE_TYPES:
    return read_audio_track(path, sample_rate=sample_rate, samples=samples)
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    x, rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError,
          OSError) as e:
    raise MediaError(f'unreadable ({e})') from None
  x = x.mean(1)
  if rate != sample_rate:
    x = speech.resample([x], rate, sample_rate)[0]
  return fit_length(x, samples)
