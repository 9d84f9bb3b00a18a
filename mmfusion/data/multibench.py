"""`multibench_affect`: MultiBench's processed affect pickles, read from disk.

CMU-MOSI and CMU-MOSEI (sentiment scores in [-3, 3]), MUStARD (sarcasm) and
UR-FUNNY (humour) as MultiBench (Liang et al., NeurIPS 2021 Datasets and
Benchmarks) packed them: facial features (`vision`), acoustic features
(`audio`) and word embeddings (`text`, GloVe 300-d), one step per word or
frame. MultiBench's download links are dead and nothing here fetches them:
point the builder at the copy you hold,

  config.data.name = 'multibench_affect/mosi'  # or mosei, mustard, urfunny
  config.data.overrides = {'path': '/abs/path/mosi_raw.pkl'}

The files, as MultiBench's examples name them: `mosi_raw.pkl` (or MulT's
`mosi_data.pkl`), `mosei_raw.pkl` (or `mosei_senti_data.pkl`), `sarcasm.pkl`
(MUStARD) and `humor.pkl` (UR-FUNNY). Each is a dict of `train`, `valid` and
`test`, each a dict of `vision`, `audio`, `text` (number arrays [N, T, F],
zero-padded at the front), `labels` ([N], [N, 1] or [N, 1, 1]; of K numbers
per example, [N, 1, K], the first is read: MOSEI's sentiment of its seven,
as MultiBench's `_process_1` reads it) and `id` ([N] names, or [N, K] parts,
joined here with '/'; when absent, 'split/row'); other keys are ignored. It
is read with an unpickler that rebuilds numpy arrays and plain containers
only, so a file cannot run code.

What MultiBench does, done here too (`datasets/affect/get_data.py` of
pliang279/MultiBench at 49f9be2):
  * `drop_entry`: an example whose text is all zeros is dropped (MultiBench
    tests `text.sum() == 0`);
  * `Affectdataset.__init__`: audio values of -inf become 0;
  * `__getitem__` cuts the front padding: every modality from the first
    non-zero text step when the modalities are aligned (the branch that
    `get_dataloader` always takes), each from its own first non-zero step
    when they are not (its `aligned=False`); with `z_norm`, each feature is
    then standardised over the example's steps (torch.std, unbiased; NaN
    -> 0);
  * `max_pad`: the first `*_steps` steps are kept, zero-padded at the end;
  * `_get_class`: `label` is 1 for a score (MOSI, MOSEI) or label (MUStARD)
    > 0, else 0, so a score of 0 is not positive; UR-FUNNY's 0/1 label is
    the class itself (the same rule, as its labels are 0 or 1);
  * the regression target: MOSI's and MOSEI's score; for MUStARD and
    UR-FUNNY, -1 for a label < 1 and 1 otherwise. `target` is that number.

Where this differs, and why:
  * An example with NaN or Inf left in a modality (after the -inf fix), or a
    NaN label, is dropped too: MultiBench feeds it on, and one NaN makes every
    loss NaN.
  * Every dropped example is listed (the pickle's split name, its row there,
    id, reason) in `dropped_rows.tsv` in the dataset's folder, and counted in
    the description and on stdout at every prepare.
  * `present/<m>` is False where an example's kept steps of `m` are all zero
    (MultiBench feeds the zeros).
  * Labels that cannot be the dataset's (a MOSI score outside [-3, 3], a
    MUStARD label not -1, 0 or 1) stop the build with a UserError: the file
    is probably another dataset's.
  * `alignment='auto'` calls a pickle aligned when its three modalities have
    the same T in every split, as MulT's aligned and MultiBench's pickles
    do; MulT's `*_noalign.pkl` files do not.

Features: `vision`, `audio`, `text` float32 [S_m, F_m] (S_m = `*_steps`, 0 for
the pickle's T; F_m as in the pickle), `length` {m: int32} (real steps among
the S_m, the rest is padding; the series encoders read all S_m), `present`
{m: bool}, `target` float32 [1], `label` (2 classes), `id`. Splits train,
validation (the pickle's `valid`) and test. When the pickle changes (size or
time) the next prepare builds the dataset again.

Shape legend: N examples, T steps in the pickle, S kept steps, F features.
"""

import dataclasses
import functools
import itertools
import json
import os
import pickle
import shutil

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.runtime import progress

MODALITIES = ('vision', 'audio', 'text')
SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}  # -> TFDS
ALIGNMENTS = ('auto', 'aligned', 'unaligned')
REPORT = 'dropped_rows.tsv'
SOURCE = 'multibench_source.json'  # the pickle's fingerprint and shapes
MAX_SCORE = 3.0  # MOSI/MOSEI sentiment lies in [-3, 3]
BINARY = (-1.0, 0.0, 1.0)  # MUStARD / UR-FUNNY labels: 0/1, or -1/1


@dataclasses.dataclass(frozen=True)
class Kind:
  """What one of the four datasets' labels are."""
  title: str
  file: str  # the pickle's name in MultiBench's examples
  classes: tuple[str, str]  # `label` 0 and 1
  target: str  # the name of `target`
  scores: bool  # sentiment scores in [-3, 3]; else labels in BINARY


KINDS = {
    'mosi': Kind('CMU-MOSI', 'mosi_raw.pkl', ('not_positive', 'positive'),
                 'sentiment', True),
    'mosei': Kind('CMU-MOSEI', 'mosei_raw.pkl', ('not_positive', 'positive'),
                  'sentiment', True),
    'mustard': Kind('MUStARD', 'sarcasm.pkl', ('not_sarcastic', 'sarcastic'),
                    'sarcasm', False),
    'urfunny': Kind('UR-FUNNY', 'humor.pkl', ('not_humorous', 'humorous'),
                    'humor', False),
}


# ----------------------------------------------------------------- Reading ---
_NUMPY_MODULES = ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray',
                  'numpy.core.numeric', 'numpy._core.numeric')
_NUMPY_NAMES = ('_reconstruct', 'ndarray', 'dtype', 'scalar', '_frombuffer')
# OrderedDict is a dict; _codecs.encode is how Python 3 pickles bytes.
_PLAIN = {('collections', 'OrderedDict'), ('_codecs', 'encode')}


class _ArrayUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays and plain containers; refuses anything else."""

  def find_class(self, module, name):
    if (module in _NUMPY_MODULES and name in _NUMPY_NAMES or
        (module, name) in _PLAIN):
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f'it holds a {module}.{name}, which is not a numpy array or a plain '
        f'container')


def read_pickle(path: str):
  """The object pickled in `path`; a UserError when it is not a pickle of
  numpy arrays and plain containers."""
  try:
    with open(path, 'rb') as f:
      try:
        return _ArrayUnpickler(f).load()
      except UnicodeDecodeError:  # pickled by Python 2
        f.seek(0)
        return _ArrayUnpickler(f, encoding='latin1').load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, ImportError, IndexError, KeyError) as e:
    raise errors.UserError(
        f'{path!r} is not a readable MultiBench pickle ({e}); pass the '
        f'.pkl file itself (unzipped, not truncated) as '
        f'data.overrides.path.') from None


def pickle_path(c) -> str:
  """The config's pickle, or a UserError saying where to point."""
  kind = KINDS[c.dataset]
  if not c.path:
    raise errors.UserError(
        f"multibench_affect/{c.dataset} needs the {kind.title} pickle; set "
        f"data.overrides={{'path': '/abs/path/{kind.file}'}}.")
  path = os.path.abspath(os.path.expanduser(c.path))
  if not os.path.isfile(path):
    raise errors.UserError(
        f'no file at {path!r}; MultiBench\'s download links are dead, so '
        f'pass the {kind.title} pickle you hold ({kind.file}) as '
        f'data.overrides.path.')
  return path


def fingerprint(path: str) -> str:
  st = os.stat(path)
  return f'{path}\t{st.st_size}\t{st.st_mtime_ns}'


def _array(value):
  """np.asarray(value), or None where it is ragged."""
  try:
    return np.asarray(value)
  except ValueError:
    return None


def _shown(x) -> str:
  return 'ragged' if x is None else f'{x.dtype}{list(x.shape)}'


def _text_of(value) -> str:
  """An id as text: bytes decoded, [K] parts joined with '/'."""
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, (list, tuple, np.ndarray)):
    return '/'.join(_text_of(v) for v in np.ravel(np.asarray(value, object)))
  return str(value.item() if isinstance(value, np.generic) else value)


def _split_arrays(split: str, part) -> tuple[dict, list[str]]:
  """({vision, audio, text, labels [N], id [N]}, problems) of one split."""
  if not isinstance(part, dict):
    return {}, [f'{split} is a {type(part).__name__}, not a dict']
  absent = [k for k in MODALITIES + ('labels',) if k not in part]
  if absent:
    return {}, [f'{split} has no {", ".join(absent)} (it has '
                f'{", ".join(sorted(map(str, part)))})']
  out, problems = {}, []
  for m in MODALITIES:
    x = _array(part[m])
    if x is None or x.ndim != 3 or x.dtype.kind not in 'biuf':
      problems.append(f'{split}/{m} is {_shown(x)}, not numbers [N, T, F]')
    else:
      out[m] = x
  labels = _array(part['labels'])
  if (labels is None or labels.ndim == 0 or labels.dtype.kind not in 'biuf'
      or labels.size < len(labels)):
    problems.append(f'{split}/labels is {_shown(labels)}, not numbers '
                    f'[N, ...]')
  else:  # the first of K per example, as MultiBench's _process_1
    out['labels'] = labels.reshape(len(labels), -1)[:, 0].astype(np.float64)
  if 'id' in part:
    ids = part['id']
    if isinstance(ids, (list, tuple)) or (
        isinstance(ids, np.ndarray) and ids.ndim):
      out['id'] = [_text_of(i) for i in ids]
    else:
      problems.append(f'{split}/id is a {type(ids).__name__}, not one id '
                      f'per example')
  counts = {k: len(v) for k, v in out.items()}
  if len(set(counts.values())) > 1:
    problems.append(f'{split} has ' + ', '.join(
        f'{n} {k}' for k, n in counts.items()) + ' (one of each per example)')
  if 'id' not in part and out.get('labels') is not None:
    out['id'] = [f'{split}/{i}' for i in range(len(out['labels']))]
  return out, problems


def arrays_of(data, path: str) -> dict:
  """{pickle split: {vision, audio, text, labels, id}}; one UserError that
  lists every way `data` is not a MultiBench affect pickle."""
  if not isinstance(data, dict):
    raise errors.UserError(
        f'{path!r} holds a {type(data).__name__}, not the dict of train, '
        f'valid and test that MultiBench\'s affect pickles hold; pass one of '
        f'those files.')
  missing = [s for s in SPLITS if s not in data]
  if missing:
    raise errors.UserError(
        f'{path!r} has no {", ".join(missing)} split (it has '
        f'{", ".join(sorted(map(str, data))) or "none"}); MultiBench\'s '
        f'affect pickles hold train, valid and test: pass one of those.')
  out, problems = {}, []
  for split in SPLITS:
    out[split], found = _split_arrays(split, data[split])
    problems += found
  for m in MODALITIES:
    widths = {s: a[m].shape[2] for s, a in out.items() if m in a}
    if len(set(widths.values())) > 1:
      problems.append(f'{m} has ' + ', '.join(
          f'{f} features in {s}' for s, f in widths.items()))
  if problems:
    raise errors.UserError(
        f'{path!r} is not laid out as a MultiBench affect pickle: '
        f'{"; ".join(problems)}; pass the file as MultiBench wrote it.')
  return out


def check_labels(splits: dict, kind: Kind, path: str):
  """A UserError naming the rows whose (finite) label `kind` cannot have."""
  bad = []
  for split, arrays in splits.items():
    y_N = arrays['labels']
    with np.errstate(invalid='ignore'):
      wrong_N = (np.abs(y_N) > MAX_SCORE if kind.scores else
                 ~np.isin(y_N, BINARY)) & np.isfinite(y_N)
    bad += [(split, int(i), y_N[i]) for i in np.flatnonzero(wrong_N)]
  if bad:
    shown = ', '.join(f'{s} row {i} ({y:g})' for s, i, y in bad[:10])
    more = f' and {len(bad) - 10} more' if len(bad) > 10 else ''
    want = (f'sentiment scores in [-{MAX_SCORE:g}, {MAX_SCORE:g}]'
            if kind.scores else 'labels 0 or 1 (or -1 and 1)')
    raise errors.UserError(
        f'{path!r} has {len(bad)} label(s) that {kind.title} cannot have: '
        f'{shown}{more}; its labels are {want}, so check that the file and '
        f'the config name (multibench_affect/<dataset>) belong together.')


def drop_reasons(arrays: dict) -> list[tuple[int, str]]:
  """[(row, reason)] of the examples left out (module docstring)."""
  no_text_N = ~np.any(arrays['text'] != 0, axis=(1, 2))
  bad_N = {m: ~np.isfinite(arrays[m]).all(axis=(1, 2)) for m in MODALITIES}
  nan_label_N = np.isnan(arrays['labels'])
  out = []
  for i in range(len(arrays['labels'])):
    why = ['no text (every text step is zero)'] if no_text_N[i] else []
    nan = [m for m in MODALITIES if bad_N[m][i]]
    if nan:
      why.append(f'NaN or Inf in {"/".join(nan)}')
    if nan_label_N[i]:
      why.append('the label is NaN')
    if why:
      out.append((i, '; '.join(why)))
  return out


def first_steps(x_NxTxF) -> np.ndarray:
  """[N] the first step holding a non-zero value; T where none does."""
  nonzero_NxT = np.any(x_NxTxF != 0, axis=2)
  return np.where(nonzero_NxT.any(1), nonzero_NxT.argmax(1),
                  x_NxTxF.shape[1])


def z_normalize(x_TxF) -> np.ndarray:
  """Each feature standardised over the steps, as MultiBench's torch code:
  unbiased std, NaN (a constant feature, a single step) -> 0."""
  if len(x_TxF) < 2:  # torch.std of one step is NaN
    return np.zeros(x_TxF.shape, np.float32)
  with np.errstate(invalid='ignore', divide='ignore'):
    z = (x_TxF - x_TxF.mean(0, keepdims=True)) / x_TxF.std(
        0, ddof=1, keepdims=True)
  return np.nan_to_num(z).astype(np.float32)


def window(x_TxF, start: int, steps: int, z_norm: bool):
  """(float32 [steps, F], real steps): `x_TxF` from `start`, z-normalised if
  asked, its first `steps` kept and zero-padded at the end."""
  x = np.asarray(x_TxF[start:], np.float32)
  if z_norm and len(x):
    x = z_normalize(x)
  out_SxF = np.zeros((steps, x_TxF.shape[1]), np.float32)
  n = min(len(x), steps)
  out_SxF[:n] = x[:n]
  return out_SxF, n


def label_and_target(kind: Kind, y: float) -> tuple[int, float]:
  """MultiBench's class (`_get_class`) and regression target of a label."""
  if kind.scores:
    return int(y > 0), float(y)
  return int(y > 0), (-1.0 if y < 1 else 1.0)


# ------------------------------------------------------------------ Source ---
@dataclasses.dataclass
class Source:
  """A pickle read and checked: arrays per split (the -inf audio fixed),
  what is dropped, and the shapes of the examples."""
  splits: dict  # pickle split -> {vision, audio, text, labels, id}
  dropped: dict  # pickle split -> [(row, reason)]
  neg_inf: int  # audio values of -inf set to 0
  aligned: bool
  shapes: dict  # modality -> (S, F)

  def summary(self) -> dict:
    """What `_info` needs, small enough to keep as JSON beside the data."""
    return {'aligned': self.aligned, 'neg_inf': self.neg_inf,
            'shapes': {m: list(s) for m, s in self.shapes.items()},
            'dropped': sum(len(d) for d in self.dropped.values())}


def is_aligned(alignment: str, splits: dict, path: str) -> bool:
  """Whether every modality is cut from the text's first step."""
  same_t = all(len({a[m].shape[1] for m in MODALITIES}) == 1
               for a in splits.values())
  if alignment == 'aligned' and not same_t:
    steps = {s: [a[m].shape[1] for m in MODALITIES] for s, a in splits.items()}
    raise errors.UserError(
        f'{path!r} cannot be aligned: its vision, audio and text steps are '
        f'{steps}; set data.overrides.alignment to unaligned (or auto).')
  return same_t if alignment == 'auto' else alignment == 'aligned'


def read_source(c) -> Source:
  """The config's pickle, read and checked (module docstring)."""
  path = pickle_path(c)
  splits = arrays_of(read_pickle(path), path)
  check_labels(splits, KINDS[c.dataset], path)
  neg_inf = 0
  for arrays in splits.values():
    audio = arrays['audio']
    if audio.dtype.kind == 'f':
      hits = audio == -np.inf
      if hits.any():
        neg_inf += int(hits.sum())
        arrays['audio'] = np.where(hits, 0, audio).astype(audio.dtype)
  shapes = {}
  for m in MODALITIES:
    steps = getattr(c, f'{m}_steps') or max(
        a[m].shape[1] for a in splits.values())
    shapes[m] = (steps, splits['train'][m].shape[2])
  return Source(splits=splits,
                dropped={s: drop_reasons(a) for s, a in splits.items()},
                neg_inf=neg_inf, aligned=is_aligned(c.alignment, splits, path),
                shapes=shapes)


def starts_of(arrays: dict, aligned: bool) -> dict:
  """{modality: [N] first kept step}: the text's for all when aligned."""
  if aligned:
    return dict.fromkeys(MODALITIES, first_steps(arrays['text']))
  return {m: first_steps(arrays[m]) for m in MODALITIES}


def example(arrays: dict, i: int, starts: dict, shapes: dict, kind: Kind,
            z_norm: bool) -> dict:
  """Example `i` of one split's arrays."""
  ex = {'length': {}, 'present': {}}
  for m in MODALITIES:
    x_SxF, n = window(arrays[m][i], int(starts[m][i]), shapes[m][0], z_norm)
    ex[m] = x_SxF
    ex['length'][m] = n
    ex['present'][m] = bool(np.any(x_SxF[:n]))
  label, target = label_and_target(kind, arrays['labels'][i])
  ex.update(label=label, target=np.asarray([target], np.float32),
            id=arrays['id'][i])
  return ex


# ----------------------------------------------------------------- Builder ---
@dataclasses.dataclass(eq=False)
class MultibenchConfig(tfds.core.BuilderConfig):
  """Which pickle, and how many steps of each modality to keep."""
  dataset: str = 'mosi'  # a KINDS key (set by the config's name)
  path: str = ''  # the .pkl file (absolute is safest)
  # Steps kept per modality (MultiBench's max_seq_len is 50); 0: the pickle's.
  vision_steps: int = 50
  audio_steps: int = 50
  text_steps: int = 50
  alignment: str = 'auto'  # 'auto' (same T: aligned), 'aligned', 'unaligned'
  z_norm: bool = False  # MultiBench's z_norm (off there by default)


BUILDER_CONFIGS = [
    MultibenchConfig(name=name, dataset=name, description=(
        f'{kind.title} from MultiBench\'s {kind.file}: vision, audio and '
        f'text features over time; {kind.target} label and target.'))
    for name, kind in KINDS.items()]


def check(c: MultibenchConfig):
  """Raises ValueError naming the first field that cannot work."""
  if c.dataset not in KINDS:
    raise ValueError(f'dataset {c.dataset!r} is not one of '
                     f'{", ".join(KINDS)}')
  for m in MODALITIES:
    steps = getattr(c, f'{m}_steps')
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
      raise ValueError(f'{m}_steps must be a whole number >= 0 (0: every '
                       f'step of the pickle), not {steps!r}')
  if c.alignment not in ALIGNMENTS:
    raise ValueError(f'alignment {c.alignment!r} is not one of '
                     f'{", ".join(ALIGNMENTS)}')
  if not isinstance(c.z_norm, bool):
    raise ValueError(f'z_norm must be True or False, not {c.z_norm!r}')


class MultibenchAffect(tfds.core.GeneratorBasedBuilder):
  """MultiBench's affect pickles: vision, audio, text series; binary label
  and continuous target."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = BUILDER_CONFIGS

  def _build_data_dir(self, given_data_dir):
    """TFDS's dataset folder, emptied first when the pickle has changed since
    it was built (TFDS then builds afresh instead of reusing it)."""
    check(self.builder_config)
    path = pickle_path(self.builder_config)
    root, data_dir = super()._build_data_dir(given_data_dir)
    saved = _saved(data_dir)
    if saved and saved.get('fingerprint') != fingerprint(path):
      print(f'{path} changed since {data_dir} was built; rebuilding.',
            flush=True)
      shutil.rmtree(data_dir)
    return root, data_dir

  @functools.cached_property
  def _source(self) -> Source:
    return read_source(self.builder_config)

  @functools.cached_property
  def _summary(self) -> dict:
    return _saved(self._data_dir) or self._source.summary()

  def target_names(self) -> dict:
    return {'target': (KINDS[self.builder_config.dataset].target,)}

  def _info(self):
    c = self.builder_config
    kind, s = KINDS[c.dataset], self._summary
    tensor = tfds.features.Tensor
    features = {m: tensor(shape=tuple(s['shapes'][m]), dtype=np.float32)
                for m in MODALITIES}
    features.update({
        'length': {m: tensor(shape=(), dtype=np.int32) for m in MODALITIES},
        'present': {m: tensor(shape=(), dtype=np.bool_) for m in MODALITIES},
        'target': tensor(shape=(1,), dtype=np.float32),
        'label': tfds.features.ClassLabel(names=kind.classes),
        'id': tfds.features.Text()})
    layout = 'aligned' if s['aligned'] else 'unaligned'
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'{kind.title} ({layout}) from {pickle_path(c)}; '
        f'{s["dropped"]} examples dropped (listed in {REPORT}); '
        f'{s["neg_inf"]} audio values of -inf set to 0.')

  def _split_generators(self, dl_manager):
    del dl_manager  # The file is local.
    src = self._source
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('split\trow\tid\treason\n')
      f.writelines(f'{s}\t{i}\t{src.splits[s]["id"][i]}\t{why}\n'
                   for s, rows in src.dropped.items() for i, why in rows)
    with open(os.path.join(self.data_dir, SOURCE), 'w') as f:
      json.dump({'fingerprint': fingerprint(pickle_path(self.builder_config)),
                 **src.summary()}, f)
    kept = {s: sorted(set(range(len(a['labels']))) -
                      {i for i, _ in src.dropped[s]})
            for s, a in src.splits.items()}
    tally = progress.Tally(sum(map(len, kept.values())), 'examples written',
                           minimum=1000)
    done = itertools.count(1)
    return {SPLITS[s]: self._generate_examples(
        s, rows, lambda: tally.update(next(done)))
            for s, rows in kept.items() if rows}

  def _generate_examples(self, split, rows, count):
    c, src = self.builder_config, self._source
    arrays = src.splits[split]
    starts = starts_of(arrays, src.aligned)
    for i in rows:
      yield f'{split}/{i}', example(arrays, i, starts, src.shapes,
                                    KINDS[c.dataset], c.z_norm)
      count()

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many examples were dropped."""
    super().download_and_prepare(**kwargs)
    self.__dict__.pop('_source', None)  # the arrays can be gigabytes
    dropped = self._summary['dropped']
    if dropped:
      print(f'{dropped} example(s) of {pickle_path(self.builder_config)} '
            f'were dropped (no text, or NaN/Inf); see '
            f'{os.path.join(self.data_dir, REPORT)}.', flush=True)


def _saved(data_dir: str) -> dict | None:
  """The SOURCE record of a built dataset folder, or None."""
  try:
    with open(os.path.join(data_dir, SOURCE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
