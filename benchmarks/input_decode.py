r"""Does the input pipeline keep the train step fed? Decode and read rates of a
dataset against the examples/s its config's train step consumes.

  python -m benchmarks.input_decode --config=mmfusion/configs/tuxpaint.py \
      [--config.data.overrides=...] [--read_workers=0,2] [--read_batches=40] \
      [--build_dir=DIR] [--demand_steps=10]
  python -m benchmarks.input_decode \
      --config=mmfusion/configs/video_folder.py:seconds=2 --clips=200

With --clips=N (a `video_folder` config) the clips are made first: N H.264
clips of 2 s, 320x240 at 25 fps, moving noise (hard to compress, so slow to
decode) with a 44.1 kHz AAC tone, listed in a path,label CSV.

Three numbers per dataset, each in examples/s:
- decode: building the dataset from its files into a fresh folder (the
  builder decodes every picture, recording and clip once, at build time;
  `pipeline.prepare` as `mmfusion.main` runs it), examples / wall time;
- read: `pipeline.train_batches` reading the built array_record files batch
  by batch (the in-memory cache off, so every batch is read and
  deserialised), with the Grain threads `mmfusion.main` uses (`workers=0`) or
  with K worker processes in front (`IterDataset.mp_prefetch`);
- demand: the config's jitted train step (`benchmarks.jax_bench`, fixed
  batch), batch / median step time.
The read rate over the demand is the margin: above 1 the step never waits.
Prints one Markdown table (benchmarks/RESULTS.md, "Real data").
"""

import csv
import fractions
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags
import grain
import numpy as np

from benchmarks import jax_bench
from benchmarks import specs
from mmfusion.data import pipeline
from mmfusion.runtime import cli
_WORKERS = flags.DEFINE_list('read_workers', ['0', '2'],
                             'Grain worker processes to read with (0: none).')
_BATCHES = flags.DEFINE_integer('read_batches', 40, 'Batches read per rate.')
_STEPS = flags.DEFINE_integer('demand_steps', 10, 'Train steps timed.')
_CLIPS = flags.DEFINE_integer(
    'clips', 0, 'Make this many synthetic clips for a video_folder config.')
_DATA_DIR = flags.DEFINE_string(
    'build_dir', None, 'Where the timed build goes (default: a temporary '
    'folder, removed after).')


def write_clip(path: str, rng, seconds: float = 2.0, size=(240, 320),
               fps: int = 25, rate: int = 44_100):
  """An .mp4 of moving noise (H.264) with a tone (AAC), as a camera's."""
  import av  # pylint: disable=g-import-not-at-top
  h, w = size
  base = rng.integers(0, 256, (h, 2 * w, 3), dtype=np.uint8)
  with av.open(path, 'w') as out:
    video = out.add_stream('libx264', rate=fps)
    video.width, video.height, video.pix_fmt = w, h, 'yuv420p'
    sound = out.add_stream('aac', rate=rate)
    for k in range(int(seconds * fps)):
      frame = av.VideoFrame.from_ndarray(
          np.ascontiguousarray(base[:, 4 * k:4 * k + w]), format='rgb24')
      frame.pts, frame.time_base = k, fractions.Fraction(1, fps)
      out.mux(video.encode(frame))
    out.mux(video.encode())
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t))
    frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None],
                                       format='fltp', layout='mono')
    frame.sample_rate, frame.pts = rate, 0
    out.mux(sound.encode(frame))
    out.mux(sound.encode())


def write_clips(folder: str, n: int) -> str:
  """n clips in `folder` and the path,label,split CSV listing them."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    write_clip(os.path.join(folder, f'clip{i}.mp4'), rng)
    rows.append((f'clip{i}.mp4', f'class{i // 4 % 4}',
                 ('train', 'train', 'validation', 'test')[i % 4]))
  path = os.path.join(folder, 'clips.csv')
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([('path', 'label', 'split'), *rows])
  return path


def decode_rate(data_config, data_dir: str) -> tuple[float, object]:
  """(examples/s of a build from scratch into `data_dir`, the builder)."""
  data_config = data_config.copy_and_resolve_references()
  data_config.data_dir = data_dir
  builder = pipeline.get_builder(data_config)
  if builder.is_prepared():
    raise SystemExit(f'{builder.data_dir} is built already; pass an empty '
                     f'--build_dir to time a build.')
  t0 = time.perf_counter()
  pipeline.prepare(builder)
  seconds = time.perf_counter() - t0
  n = sum(s.num_examples for s in builder.info.splits.values())
  return n / seconds, builder


def read_rate(builder, config, workers: int, batches: int) -> float:
  """Examples/s of reading train batches from the built files."""
  ds = pipeline.train_batches(
      builder.as_data_source(split='train'), batch_size=config.batch_size,
      seed=0, modalities=config.data.modalities, in_memory_bytes=0,
      targets=tuple(t for t in ('label',) if t in builder.info.features))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  it = iter(ds)
  for _ in range(3):  # workers started, buffers full
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return config.batch_size * batches / (time.perf_counter() - t0)


def demand(config, steps: int) -> float:
  """Examples/s the config's train step consumes."""
  runner = jax_bench.JaxRunner(specs.Spec('bench', config, config.batch_size))
  runner.run(2)
  times = sorted(runner.run(steps))
  return config.batch_size / times[len(times) // 2]


def main(argv):
  del argv
  config = cli.CONFIG.value
  folder = _DATA_DIR.value or tempfile.mkdtemp(prefix='input_decode_')
  try:
    if _CLIPS.value:
      clips = os.path.join(folder, 'clips')
      config.data.overrides = {**config.data.overrides, 'folder': clips,
                               'csv': (write_clips(clips, _CLIPS.value),)}
    decoded, builder = decode_rate(config.data, folder)
    reads = {int(k): read_rate(builder, config, int(k), _BATCHES.value)
             for k in _WORKERS.value}
    config.data.data_dir = folder  # the built copy gives the model's shapes
    needed = demand(config, _STEPS.value)
  finally:
    if not _DATA_DIR.value:
      shutil.rmtree(folder, ignore_errors=True)
  name = builder.info.full_name.split('/')[0]
  print(f'\ncommand: python -m benchmarks.input_decode '
        f'{" ".join(sys.argv[1:])}  (cores: {os.cpu_count()})\n')
  print('| dataset | batch | decode (build) ex/s | ' + ' | '.join(
      f'read, {k} workers ex/s' for k in reads) +
        ' | train step ex/s | read / demand |')
  print('|---' * (5 + len(reads)) + '|')
  best = max(reads.values())
  print(f'| {name} | {config.batch_size} | {decoded:,.0f} | ' + ' | '.join(
      f'{r:,.0f}' for r in reads.values()) +
        f' | {needed:,.0f} | {best / needed:.1f}x |')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
