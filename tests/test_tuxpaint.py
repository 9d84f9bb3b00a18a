"""The tuxpaint builder, on a tiny stand-in for Tux Paint's stamps folder."""

import os

import ml_collections
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import pipeline
from mmfusion.data import tokenizer
from mmfusion.data import tuxpaint

TINY = {'image_size': 16, 'audio_samples': 4000, 'text_length': 24}
RATE = 16_000
# Each recording is a tone of its own pitch, so the audio says which file it
# came from; written at the package's rates, so it is resampled.
TONE_HZ = {'frog.ogg': 300, 'frog_desc.ogg': 500, 'frog_desc_fr.ogg': 700,
           'cat_desc_fr.ogg': 900, 'apple_desc_en_GB.ogg': 1100,
           '3.ogg': 1300, '3_en_GB.ogg': 1500}
# id -> (PNG mode or None for SVG only, .txt lines or None)
STAMPS = {
    'animals/amphibians/frog': ('RGBA', ['A frog.', 'fr.utf8=Une grenouille.',
                                         'de.utf8=Ein Frosch.']),
    'animals/cat': ('LA', ['A cat.', 'de.utf8=Eine Katze.']),
    'food/fruit/apple': ('P', ['An apple.', 'fr.utf8=Une pomme.']),
    'food/fruit/pear': (None, ['A pear.']),  # SVG only: skipped
    'food/fruit/plum': ('RGB', None),  # PNG and SVG, no caption
    'symbols/math/3': ('L', ['The number three.', 'fr.utf8=Le nombre trois.']),
}


def _png(path, mode):
  """A 40x20 picture: left half red and opaque, right half see-through (in
  the modes that have transparency), else green."""
  from PIL import Image
  rgba = np.zeros((20, 40, 4), np.uint8)
  rgba[:, :20] = (255, 0, 0, 255)
  rgba[:, 20:] = (0, 255, 0, 0)
  im = Image.fromarray(rgba, 'RGBA')
  if mode == 'P':
    im = im.convert('RGB').convert('P')
    im.info['transparency'] = im.getpixel((30, 10))
  elif mode != 'RGBA':
    im = im.convert(mode)
  im.save(path)


def _ogg(path, hz, rate=44_100, seconds=0.2):
  import soundfile
  t = np.arange(int(seconds * rate)) / rate
  soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * hz * t), rate,
                  format='OGG', subtype='VORBIS')


def _fillers():
  """Names of plain stamps that put at least two in every split."""
  names, per_split = [], {s: 0 for s in tuxpaint.SPLITS}
  for i in range(200):
    split = tuxpaint.split_of(f'symbols/shapes/shape{i}')
    if per_split[split] < 2:
      per_split[split] += 1
      names.append(f'shape{i}')
  return names


def _tree(root):
  """The stand-in stamps folder under `root`, in the package's layout."""
  stamps = root / tuxpaint.STAMPS
  spec = dict(STAMPS)
  spec.update({f'symbols/shapes/{n}': ('RGBA', [f'Shape {n}.'])
               for n in _fillers()})
  for ident, (mode, lines) in spec.items():
    folder = stamps / os.path.dirname(ident)
    folder.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(ident)
    if mode is None or ident.endswith('plum'):
      (folder / f'{name}.svg').write_text('<svg/>')
    if mode is not None:
      _png(folder / f'{name}.png', mode)
    if lines is not None:
      (folder / f'{name}.txt').write_text('\n'.join(lines) + '\n')
    (folder / f'{name}.dat').write_text('colorable\n')
  for file, hz in TONE_HZ.items():
    folder = {'frog': 'animals/amphibians', 'cat': 'animals',
              'apple': 'food/fruit', '3': 'symbols/math'}[file.split('_')[0]
                                                          .split('.')[0]]
    _ogg(stamps / folder / file, hz, rate=11_025 if file == '3.ogg' else
         44_100)
  (stamps / '.hidden').mkdir()
  return root


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return _tree(tmp_path_factory.mktemp('tuxpaint'))


def _builder(data_dir, root, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'tuxpaint/default', 'data_dir': data_dir,
      'overrides': {'stamps_dir': str(root), **TINY, **overrides}}))


def _built(data_dir, root, **overrides):
  builder = _builder(data_dir, root, **overrides)
  pipeline.prepare(builder)
  return builder


def _examples(builder):
  """{id: example} over every split, with `split` added."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      ex = dict(source[i])
      ex['id'] = ex['id'].decode() if isinstance(ex['id'], bytes) else ex['id']
      out[ex['id']] = {**ex, 'split': split}
  return out


def _text(ex):
  return tokenizer.ByteTokenizer().decode(ex['text'])[0]


def _peak_hz(wave_S):
  spectrum = np.abs(np.fft.rfft(wave_S))
  return spectrum.argmax() * RATE / len(wave_S)


@pytest.fixture(scope='module')
def english(data_dir, tree):
  return _built(data_dir, tree)


def test_shapes_dtypes_and_splits(english):
  examples = _examples(english)
  with_png = {i for i, (mode, _) in STAMPS.items() if mode is not None}
  assert with_png <= set(examples) and 'food/fruit/pear' not in examples
  assert len(examples) == len(with_png) + 6  # and the fillers
  sizes = {s: english.info.splits[s].num_examples for s in english.info.splits}
  assert set(sizes) == {'train', 'validation', 'test'}
  for ident, ex in examples.items():
    assert ex['split'] == tuxpaint.split_of(ident)
    assert ex['image'].shape == (16, 16, 3) and ex['image'].dtype == np.uint8
    assert ex['text'].shape == (24,) and ex['text'].dtype == np.int32
    assert ex['audio'].shape == (4000,) and ex['audio'].dtype == np.float32
    assert ex['present']['image']
  features = english.info.features
  assert features['label'].names == ['animals', 'food', 'symbols']
  assert features['subcategory'].names == [
      'animals', 'animals/amphibians', 'food/fruit', 'symbols/math',
      'symbols/shapes']
  for ident, ex in examples.items():
    assert features['label'].names[ex['label']] == ident.split('/')[0]
  assert features['subcategory'].names[
      examples['animals/amphibians/frog']['subcategory']] == (
          'animals/amphibians')
  assert features['subcategory'].names[examples['animals/cat'][
      'subcategory']] == 'animals'
  split = max(sizes, key=sizes.get)
  batch = next(pipeline.eval_batches(
      english.as_data_source(split=split), batch_size=4,
      modalities=('image', 'text', 'audio')))
  assert batch['label'].dtype == np.int32 and batch['present/audio'].dtype == (
      np.bool_)


def test_split_fractions_are_70_10_20_by_stamp():
  ids = [f'animals/birds/bird{i}' for i in range(5000)]
  splits = [tuxpaint.split_of(i) for i in ids]
  for split, share in zip(tuxpaint.SPLITS, (0.7, 0.1, 0.2)):
    assert abs(splits.count(split) / len(ids) - share) < 0.02, split
  assert [tuxpaint.split_of(i, (0.0, 0.0, 1.0)) for i in ids[:50]] == (
      ['test'] * 50)


def test_image_is_composited_on_white_and_padded_to_a_square(english):
  examples = _examples(english)
  for ident in ('animals/amphibians/frog', 'animals/cat', 'food/fruit/apple'):
    im = examples[ident]['image'].astype(int)
    # 40x20 -> 40x40 with white bands above and below, then 16x16 (LANCZOS
    # rings a little near the edge).
    assert (im[:2] >= 250).all() and (im[-2:] >= 250).all(), ident
    assert (im[7:9, :4].min(-1) < 128).all(), ident  # the red is not cut
    # The transparent right half is white, not green or black.
    assert (im[6:10, 11:] >= 250).all(), ident
    if ident != 'animals/cat':  # LA is grey: red is a mid grey
      assert (im[6:10, 1:6, 0] >= 250).all() and (
          im[6:10, 1:6, 1:] <= 5).all(), ident
    else:
      assert (im[6:10, 1:6] < 128).all()
  plum = examples['food/fruit/plum']['image'].astype(int)
  assert (plum[6:10, 11:, 1] >= 250).all() and (plum[6:10, 11:, 0] <= 5).all()


def test_caption_is_the_first_line_and_a_locale_picks_its_line(
    english, data_dir, tree):
  en = _examples(english)
  assert _text(en['animals/amphibians/frog']) == 'A frog.'
  assert _text(en['symbols/math/3']) == 'The number three.'
  assert en['animals/cat']['locale'] in ('en', b'en')
  # No .txt: no caption, in any locale.
  plum = en['food/fruit/plum']
  assert not plum['present']['text'] and not plum['text'].any()
  fr = _examples(_built(data_dir, tree, text_locale='fr', audio_lang='fr'))
  assert _text(fr['animals/amphibians/frog']) == 'Une grenouille.'
  assert _text(fr['food/fruit/apple']) == 'Une pomme.'
  assert fr['animals/amphibians/frog']['present']['text']
  cat = fr['animals/cat']  # has de, not fr
  assert not cat['present']['text'] and not cat['text'].any()
  assert cat['locale'] in ('', b'')


def test_present_is_false_where_the_recording_is_missing(
    english, data_dir, tree):
  en = _examples(english)
  frog = en['animals/amphibians/frog']
  # The spoken description (frog_desc.ogg), not the sound effect (frog.ogg).
  assert frog['present']['audio']
  assert abs(_peak_hz(frog['audio']) - 500) < 8
  apple = en['food/fruit/apple']  # a regional English voice (en_GB)
  assert apple['present']['audio'] and abs(_peak_hz(apple['audio']) - 1100) < 8
  # 0.2 s of sound, zero-padded to 0.25 s
  assert not apple['audio'][3300:].any() and apple['audio'][:3000].any()
  for ident in ('animals/cat', 'food/fruit/plum', 'symbols/math/3'):
    assert not en[ident]['present']['audio'], ident
    assert not en[ident]['audio'].any(), ident
  fr = _examples(_built(data_dir, tree, text_locale='fr', audio_lang='fr'))
  assert abs(_peak_hz(fr['animals/amphibians/frog']['audio']) - 700) < 8
  assert abs(_peak_hz(fr['animals/cat']['audio']) - 900) < 8
  assert not fr['food/fruit/apple']['present']['audio']
  assert not fr['food/fruit/apple']['audio'].any()


def test_recordings_by_kind_and_language(tree):
  stamps, _ = tuxpaint.find_stamps(tuxpaint.stamps_dir(str(tree)))
  by_id = {s.id: s for s in stamps}
  three, frog = by_id['symbols/math/3'], by_id['animals/amphibians/frog']
  assert tuxpaint.recording(three, 'name', 'en') == '3_en_GB.ogg'
  assert tuxpaint.recording(three, 'sound', 'en') == '3.ogg'
  assert tuxpaint.recording(three, 'desc', 'en') is None
  assert tuxpaint.recording(three, 'name', 'fr') is None
  assert tuxpaint.recording(frog, 'sound', 'fr') == 'frog.ogg'
  assert tuxpaint.recording(frog, 'name', 'en') is None
  files = frozenset({'a.png', 'a_desc_pt_BR.wav', 'a_desc_pt.ogg',
                     'a_b_desc_fr.ogg', 'a_desc_es_ES.ogg',
                     'a_desc_es_ES.wav'})
  stamp = tuxpaint.Stamp('x/a', '/nowhere', files)
  assert tuxpaint.recording(stamp, 'desc', 'pt_BR') == 'a_desc_pt_BR.wav'
  assert tuxpaint.recording(stamp, 'desc', 'pt') == 'a_desc_pt.ogg'
  assert tuxpaint.recording(stamp, 'desc', 'es') == 'a_desc_es_ES.ogg'
  assert tuxpaint.recording(stamp, 'desc', 'fr') is None  # a_b's
  assert tuxpaint.recording(stamp, 'name', 'b') is None


def test_random_locale_is_one_of_the_stamps_own(data_dir, tree):
  captions = {'en': 'A frog.', 'fr': 'Une grenouille.', 'de': 'Ein Frosch.'}
  drawn = {tuxpaint.pick_locale(captions, 'random',
                                np.random.default_rng(s)) for s in range(40)}
  assert drawn == set(captions)
  assert tuxpaint.pick_locale({}, 'random', np.random.default_rng(0)) is None
  built = _examples(_built(data_dir, tree, text_locale='random'))
  locales = set()
  for ident, (_, lines) in STAMPS.items():
    if ident not in built or lines is None:
      continue
    ex = built[ident]
    locale = ex['locale'].decode() if isinstance(ex['locale'], bytes) else (
        ex['locale'])
    own = tuxpaint.parse_captions('\n'.join(lines))
    assert _text(ex) == own[locale], ident
    locales.add(locale)
  assert len(locales) > 1


def test_parse_captions():
  text = 'A frog.\nfr.utf8=Une grenouille.\nsr@latin.utf8=Žaba.\nde.utf8=\n'
  assert tuxpaint.parse_captions(text) == {
      'en': 'A frog.', 'fr': 'Une grenouille.', 'sr@latin': 'Žaba.'}
  assert tuxpaint.parse_captions('') == {}


def test_svg_only_stamps_are_reported_as_skipped(english, tree, data_dir,
                                                  capsys):
  report = os.path.join(english.data_dir, tuxpaint.REPORT)
  with open(report) as f:
    rows = f.read().splitlines()
  assert rows == ['id\treason', 'food/fruit/pear\tSVG only (not rasterized)']
  assert '1 SVG-only stamps skipped' in english.info.description
  capsys.readouterr()
  pipeline.prepare(_builder(data_dir, tree))  # already built: still said
  assert '1 SVG-only Tux Paint stamps were skipped' in capsys.readouterr().out


def _files(builder) -> dict[str, bytes]:
  """{name: bytes} of the files a build wrote (its version folder)."""
  root = builder.data_dir
  return {os.path.relpath(os.path.join(d, f), root):
          open(os.path.join(d, f), 'rb').read()
          for d, _, fs in os.walk(root) for f in fs}


def test_building_twice_gives_identical_files_and_shows_progress(
    english, tree, tmp_path, capsys):
  capsys.readouterr()
  again = _built(str(tmp_path), tree)
  out = capsys.readouterr().out
  n = sum(s.num_examples for s in again.info.splits.values())
  assert f'{n}/{n} stamps read' in out and '\r' not in out
  a, b = _files(english), _files(again)
  assert sorted(a) == sorted(b) and any('.array_record-' in f for f in a)
  differ = [f for f in a if a[f] != b[f]]
  assert not differ, f'files that differ between two builds: {differ}'


def test_missing_stamps_and_bad_configs_are_one_sentence(data_dir, tmp_path):
  with pytest.raises(errors.UserError, match='make tuxpaint'):
    _builder(data_dir, tmp_path / 'nothing')
  with pytest.raises(errors.UserError, match="audio 'speech' is not one of"):
    _builder(data_dir, tmp_path, audio='speech')
  with pytest.raises(errors.UserError, match='split_fractions'):
    _builder(data_dir, tmp_path, split_fractions=(0.5, 0.5, 0.5))
  with pytest.raises(errors.UserError, match='text_locale'):
    _builder(data_dir, tmp_path, text_locale='French')


def test_damaged_files_are_one_user_error_naming_them(tmp_path):
  for bad in ('png', 'ogg'):
    root = tmp_path / bad
    folder = root / 'symbols' / 'math'
    folder.mkdir(parents=True)
    _png(folder / 'one.png', 'RGBA')
    (folder / 'one.txt').write_text('One.\n')
    _ogg(folder / 'one_desc.ogg', 440)
    damaged = folder / f'one{"_desc" if bad == "ogg" else ""}.{bad}'
    damaged.write_bytes(damaged.read_bytes()[:60])
    with pytest.raises(errors.UserError, match=f'one(_desc)?.{bad}') as e:
      _built(str(tmp_path / f'data_{bad}'), root,
             split_fractions=(1.0, 0.0, 0.0))
    assert 'unpack the package again' in str(e.value)


def test_config_builds_a_model():
  from mmfusion import build
  from mmfusion import models
  from mmfusion.configs import tuxpaint as config_lib
  for arg in ('', 'runlocal', 'image+text', 'speech=en,runlocal'):
    config = config_lib.get_config(arg)
    build.check_config(config)
    assert config.data.name == 'tuxpaint/default'
    model = models.from_config(config.model, num_outputs=16)
    assert set(model.encoders) == set(config.data.modalities)
  config = config_lib.get_config('runlocal')
  assert config.data.overrides['audio_lang'] == 'fr'
  assert config.total_steps < 100
  assert config_lib.get_config('speech=en').data.overrides['audio_lang'] == (
      'en')
  with pytest.raises(ValueError, match='config arg'):
    config_lib.get_config('video')


@pytest.mark.slow  # a whole run through the loop, checkpoints and load
def test_the_config_trains_end_to_end_on_the_stand_in(tree, data_dir,
                                                      tmp_path):
  """Image + caption + speech (French, absent for some stamps) through the
  loop: trained, evaluated and loaded back; predictions for every test
  stamp."""
  import mmfusion
  from mmfusion import train
  from mmfusion.configs import tuxpaint as config_lib
  config = config_lib.get_config(f'runlocal,stamps={tree}')
  config.data.data_dir = data_dir
  config.data.overrides = {**config.data.overrides, **TINY}
  config.batch_size, config.total_steps, config.num_devices = 2, 4, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['step'] == 4 and np.isfinite(results['test']['loss'])
  model = mmfusion.load(workdir)
  builder = pipeline.get_builder(config.data)
  batch = next(pipeline.eval_batches(
      builder.as_data_source(split='test'), batch_size=8,
      modalities=config.data.modalities))
  probs = np.asarray(model.apply_batch(batch)['probabilities'])
  classes = builder.info.features['label'].names  # the stand-in's categories
  assert classes == ['animals', 'food', 'symbols']
  assert probs.shape == (len(batch['label']), len(classes))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_retrieval_configs_pair_the_first_modality_with_the_rest():
  from mmfusion import build
  from mmfusion.configs import tuxpaint as config_lib
  towers = {
      'image+text,task=retrieval': ((('image',), ('text',)), True),
      'image+audio,task=retrieval': ((('image',), ('audio',)), False),
      'audio+text,task=retrieval,caption=de': ((('audio',), ('text',)),
                                               False),
      'image+text+audio,task=retrieval': ((('image',), ('text', 'audio')),
                                          False)}
  for arg, (pair, zero_shot) in towers.items():
    config = config_lib.get_config(arg)
    build.check_config(config)
    assert config.task.name == 'contrastive' and config.task.towers == pair
    assert config.task.zero_shot == zero_shot, arg  # English captions only
    assert config.best_metric == 'recall@1'
  config = config_lib.get_config(
      'image+text,task=retrieval,pretrained=image+text,finetune=frozen')
  build.check_config(config)
  assert not config.task.zero_shot  # its prompts would be bytes, not WordPiece
  assert config.model.encoders.text.name == 'bert'
  assert config.model.encoders.image.finetune == 'frozen'
  assert config.data.overrides['text_tokenizer'] == 'all-MiniLM-L6-v2'
  for bad in ('image,task=retrieval', 'task=captioning', 'pretrained=video',
              'finetune=lora'):
    with pytest.raises(ValueError, match='config arg'):
      config_lib.get_config(bad)


@pytest.mark.slow  # a whole run through the loop
def test_cross_lingual_retrieval_trains_on_the_stand_in(tree, data_dir,
                                                        tmp_path):
  """French speech <-> English captions: stamps with no French recording
  take no part, and recall@K is scored over those that have one."""
  from mmfusion import train
  from mmfusion.configs import tuxpaint as config_lib
  config = config_lib.get_config(
      f'audio+text,task=retrieval,speech=fr,runlocal,stamps={tree}')
  config.data.data_dir = data_dir
  config.data.overrides = {**config.data.overrides, **TINY}
  config.batch_size, config.total_steps, config.num_devices = 2, 2, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  test = results['test']
  builder = pipeline.get_builder(config.data)
  with_french = sum(bool(ex['present']['audio']) for ex in
                    _examples(builder).values() if ex['split'] == 'test')
  assert test['examples'] == with_french
  assert 0.0 <= test['recall@1'] <= test['recall@5'] <= 1.0
