"""Offline speech: eSpeak NG (formant synthesis) through ctypes, no download.

The shared library and its voice data ship in the `espeakng-loader` wheel.
eSpeak keeps state between utterances in C statics (the pitch flutter phase,
the Klatt noise generator) that neither `espeak_Terminate` nor a new seed
resets, so the same word sounds a little different each time it is spoken in
one process. `render` therefore speaks a whole list of requests in a fresh
child process: the same list gives the same samples, bit for bit, every time,
and the C library never runs inside the caller.

A voice is an accent (a language file) plus a variant (a speaker timbre),
written as eSpeak does: `en-us+f3`.
"""

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from mmfusion.runtime import errors

SAMPLE_RATE = 22_050  # what eSpeak NG synthesizes
# espeak_AUDIO_OUTPUT, espeak_PARAMETER and flag values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH = 1, 3
_CHARS_UTF8 = 1

ENGLISH_ACCENTS = ('en', 'en-us', 'en-gb-scotland', 'en-gb-x-gbclan',
                   'en-gb-x-gbcwmd', 'en-gb-x-rp', 'en-029', 'en-us-nyc')
# Speakers (variants) held out of training: every accent speaks with them,
# but only in their split. The rest of `variants()` trains.
HELD_OUT_VARIANTS = {
    'validation': ('f3', 'm4', 'klatt2', 'Alicia', 'Gene', 'Michael', 'aunty',
                   'boris', 'iven2', 'norbert', 'robosoft5', 'steph3'),
    'test': ('f5', 'm6', 'klatt5', 'Andrea', 'Lee', 'Storm', 'benjamin',
             'grandma', 'iven4', 'quincy', 'robosoft7', 'whisperf'),
}
# Too slow for short clips (Marco, AnxiousAndy) or not a valid name.
_UNUSED_VARIANTS = ('Marco', 'AnxiousAndy', 'Mr serious')


@dataclasses.dataclass(frozen=True)
class Request:
  """One utterance: `text` in `voice`, `rate` words/min, `pitch` 0-99."""
  voice: str
  text: str
  rate: int = 175
  pitch: int = 50


def _loader():
  try:
    import espeakng_loader  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(
        'speech synthesis needs the espeakng-loader package (the eSpeak NG '
        'library and voices); pip install espeakng-loader.') from None
  return espeakng_loader


def variants() -> list[str]:
  """Names of the voice variants (speaker timbres) the installed data has."""
  path = os.path.join(_loader().get_data_path(), 'voices', '!v')
  return sorted(os.listdir(path))


def voices(split: str) -> list[str]:
  """The `accent+variant` voices of `split` ('train', 'validation' or 'test');
  the three lists share no voice."""
  held = HELD_OUT_VARIANTS.get(split)
  if held is None:
    taken = {v for vs in HELD_OUT_VARIANTS.values() for v in vs}
    held = [v for v in variants() if v not in taken and v not in
            _UNUSED_VARIANTS]
  return [f'{a}+{v}' for a in ENGLISH_ACCENTS for v in held]


def resample(waves, rate_in: int, rate_out: int, chunk: int = 256):
  """float32 copies of the 1-D `waves` resampled by polyphase filtering
  (scipy.signal), zero-padded in chunks so that scipy filters many at once."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  g = np.gcd(rate_in, rate_out)
  up, down = rate_out // g, rate_in // g
  out = []
  for start in range(0, len(waves), chunk):
    part = waves[start:start + chunk]
    padded = np.zeros((len(part), max(len(w) for w in part)), np.float32)
    for row, w in zip(padded, part):
      row[:len(w)] = w
    resampled = signal.resample_poly(padded, up, down, axis=1)
    out += [r[:-(-len(w) * up // down)].astype(np.float32)
            for r, w in zip(resampled, part)]
  return out


def trim(wave, threshold: float = 0.01, margin: int = 160) -> np.ndarray:
  """`wave` without the leading and trailing samples below `threshold` x peak
  (keeping `margin` samples either side), scaled to peak 1."""
  peak = float(np.max(np.abs(wave), initial=0.0))
  if peak == 0.0:
    return np.zeros(0, np.float32)
  loud = np.flatnonzero(np.abs(wave) >= threshold * peak)
  lo, hi = max(loud[0] - margin, 0), loud[-1] + 1 + margin
  return (wave[lo:hi] / peak).astype(np.float32)


class Synthesizer:
  """In-process eSpeak NG. Use `render` instead unless you are its child."""

  def __init__(self, seed: int = 0):
    loader = _loader()
    self._lib = lib = ctypes.CDLL(loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int,
                                      ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 loader.get_data_path().encode(), 0)
    if rate != SAMPLE_RATE:
      raise RuntimeError(f'eSpeak NG failed to start (returned {rate}).')
    self._chunks = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(
        ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    self._callback = callback_type(self._collect)  # kept alive on self
    lib.espeak_SetSynthCallback(self._callback)
    lib.espeak_ng_SetRandSeed(seed)  # the Klatt voices' noise source
    ctypes.CDLL(None).srand(seed)

  def _collect(self, wav, num_samples, events):
    del events
    if num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    return 0  # 0: go on synthesizing

  def say(self, request: Request) -> np.ndarray:
    """int16 samples at SAMPLE_RATE of one utterance."""
    lib = self._lib
    if lib.espeak_SetVoiceByName(request.voice.encode()) != 0:
      raise ValueError(f'eSpeak NG has no voice {request.voice!r}')
    lib.espeak_SetParameter(_RATE, int(request.rate), 0)
    lib.espeak_SetParameter(_PITCH, int(request.pitch), 0)
    text = request.text.encode('utf-8') + b'\0'
    self._chunks = []
    lib.espeak_Synth(text, len(text), 0, 0, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if not self._chunks:
      return np.zeros(0, np.int16)
    return np.concatenate(self._chunks).astype(np.int16)


def render(requests, seed: int = 0) -> list[np.ndarray]:
  """int16 waveforms at SAMPLE_RATE, one per request, spoken in a fresh process.

  Deterministic: the same `requests` and `seed` give identical samples.
  """
  requests = [dataclasses.asdict(r) for r in requests]
  if not requests:
    return []
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'speech.npz')
    job = json.dumps({'requests': requests, 'seed': seed, 'out': out})
    # Run as a script, not `-m`: importing mmfusion.data would load TFDS.
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        [root, os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)],
                          input=job, capture_output=True, text=True,
                          check=False, env=env)
    if proc.returncode != 0:
      message = proc.stderr.strip().splitlines()[-1:] or ['no output']
      raise errors.UserError(
          f'speech synthesis failed ({message[0]}); check that the '
          f'espeakng-loader package is installed and importable.')
    with np.load(out) as f:
      samples, ends = f['samples'], f['ends']
  return np.split(samples, ends[:-1])


def _child():
  """Entry point of the `render` child: JSON job on stdin, npz file out."""
  job = json.load(sys.stdin)
  synth = Synthesizer(job['seed'])
  waves = [synth.say(Request(**r)) for r in job['requests']]
  np.savez(job['out'], samples=np.concatenate(waves),
           ends=np.cumsum([len(w) for w in waves]))


if __name__ == '__main__':
  _child()
