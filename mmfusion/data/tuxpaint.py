"""Reading Debian's `tuxpaint-stamps-default` (2022.06.04, GPL-2) from disk.

Tux Paint's stamps come with recordings made by people, not synthesizers:
in `symbols/math`, `N.ogg` and `N_en_GB.ogg` are two human English voices
saying the digit N (an American one at 11,025 Hz and a British one at
44,100 Hz). av_digits' `test_speech_shift` split is built from them.

The package is 160 MB, so nothing fetches it for you at run time; get it
once with

  make tuxpaint        # apt-get download + dpkg -x into TUXPAINT_DIR

which unpacks it into `~/.cache/mmfusion/tuxpaint` (DEFAULT_DIR). Any of
these paths works where a stamps folder is asked for: the folder `dpkg -x`
unpacked into, an installed `/usr/share/tuxpaint/stamps`, or a copy of
either in the same layout. OGG Vorbis is decoded by `soundfile`
(libsndfile, whose wheels ship their own codecs).
"""

import os

import numpy as np

from mmfusion.runtime import errors
from mmfusion.data import speech

DEFAULT_DIR = '~/.cache/mmfusion/tuxpaint'  # `make tuxpaint` unpacks here
STAMPS = os.path.join('usr', 'share', 'tuxpaint', 'stamps')
# voice name -> file of digit N in symbols/math
DIGIT_VOICES = {'tuxpaint/en': '{}.ogg', 'tuxpaint/en_GB': '{}_en_GB.ogg'}


def stamps_dir(path: str) -> str:
  """The stamps folder (holding `symbols/`, `animals/`, ...) at or under
  `path`; a UserError saying how to get it when there is none."""
  path = os.path.expanduser(path)
  for candidate in (os.path.join(path, STAMPS), path):
    if os.path.isdir(os.path.join(candidate, 'symbols')):
      return candidate
  raise errors.UserError(
      f'{path!r} holds no Tux Paint stamps (no symbols/ folder in it or in '
      f'its {STAMPS}); run `make tuxpaint` to unpack tuxpaint-stamps-default '
      f'into {DEFAULT_DIR}, or point at an unpacked copy of the package.')


def read_ogg(path: str, rate: int) -> np.ndarray:
  """float32 [S] mono samples of an OGG file at `rate` Hz."""
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    x, source_rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError) as e:
    raise errors.UserError(f'cannot decode {path!r} ({e}); the file is '
                           f'damaged: unpack the package again.') from None
  x = x.mean(axis=1)
  return x if source_rate == rate else speech.resample(
      [x], source_rate, rate)[0]


def spoken_digits(path: str, rate: int):
  """(voice names [V], waves [V][10]): each human voice saying 0-9, float32
  at `rate` Hz, trimmed and scaled to peak 1 as av_digits' eSpeak words are.
  A missing file is a UserError naming every one that is missing."""
  folder = os.path.join(stamps_dir(path), 'symbols', 'math')
  files = {v: [os.path.join(folder, f.format(d)) for d in range(10)]
           for v, f in DIGIT_VOICES.items()}
  missing = [p for ps in files.values() for p in ps if not os.path.isfile(p)]
  if missing:
    raise errors.UserError(
        f'the Tux Paint stamps at {folder!r} lack {len(missing)} spoken '
        f'digits ({", ".join(os.path.basename(p) for p in missing)}); unpack '
        f'tuxpaint-stamps-default 2022.06.04 again (`make tuxpaint`).')
  return (list(files), [[speech.trim(read_ogg(p, rate)) for p in ps]
                        for ps in files.values()])
