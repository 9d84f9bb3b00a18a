"""What a trained model needs to know of its dataset, without the dataset.

`DataInfo` is read off a TFDS builder when a run is built and written to the
workdir (`data_info.json`), so `mmfusion.load` can rebuild the model and
preprocess raw inputs where the data (or the manifest) is not at hand.
"""

import dataclasses
import json
import os

import numpy as np

from mmfusion.data import tokenizer
from mmfusion.runtime import files

FILE = 'data_info.json'


# Target features a dataset may have, and their arrays in a batch: `label`
# int32 [B] (a class id), `labels` float32 [B, C] (multi-hot), `target`
# float32 [B, R] (continuous), `caption` int32 [B, L] (token ids of a text
# to generate: a caption, an answer; right-padded with 0, no BOS or EOS) and
# `prompt` int32 [B, P] (token ids the generated text starts from, such as
# a language tag). The task of a run says which it reads.
TARGETS = {'label': np.int32, 'labels': np.float32, 'target': np.float32,
           'caption': np.int32, 'prompt': np.int32}
TEXT_TARGETS = ('caption', 'prompt')


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Targets, per-example input shapes and preprocessing of one dataset."""
  name: str  # config.data.name
  modalities: tuple[str, ...]  # config.data.modalities, in config order
  classes: tuple[str, ...]  # names of the `label` classes (() without one)
  inputs: dict  # modality -> (shape of one example, numpy dtype name)
  # modality -> how raw inputs become arrays: {'sample_rate': 16000} for
  # audio, {'tokenizer': 'bytes'} for token ids, {'columns': [...]} for
  # manifest numbers.
  preprocessing: dict
  # target key (TARGETS) -> {'names': [...] (classes, labels or targets),
  # and what the train split says of it: 'mean'/'std' of each target,
  # 'positives' of each label}; a text target (TEXT_TARGETS) ->
  # {'length': L, 'tokenizer': its `preprocessing` entry}.
  targets: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def target_shape(self, key: str) -> tuple[int, ...]:
    """Shape of one example's `key`: () for a label, (L,) for a text,
    (C,) or (R,) else."""
    if key in TEXT_TARGETS:
      return (self.targets[key]['length'],)
    return () if key == 'label' else (len(self.targets[key]['names']),)

  def text_tokenizer(self, key: str = 'caption'):
    """The tokenizer of the text target `key` (encode / decode)."""
    return tokenizer.of_preprocessing(self.targets[key]['tokenizer'])

  def batch_spec(self, batch_size: int, targets=('label',)) -> dict:
    """{key: (shape, dtype)} of a batch in the pipeline's contract, with the
    target keys `targets`."""
    spec = {m: ((batch_size,) + tuple(shape), np.dtype(dtype))
            for m, (shape, dtype) in self.inputs.items()}
    for key in targets:
      spec[key] = ((batch_size,) + self.target_shape(key),
                   np.dtype(TARGETS[key]))
    for m in self.modalities:
      spec[f'present/{m}'] = ((batch_size,), np.dtype(np.bool_))
    return spec

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['inputs'] = {m: [list(s), t] for m, (s, t) in self.inputs.items()}
    return d

  @classmethod
  def from_json(cls, d: dict) -> 'DataInfo':
    classes = tuple(d['classes'])
    # Files written before tasks existed describe a classification dataset.
    targets = d.get('targets', {'label': {'names': list(classes)}})
    return cls(name=d['name'], modalities=tuple(d['modalities']),
               classes=classes,
               inputs={m: (tuple(s), t) for m, (s, t) in d['inputs'].items()},
               preprocessing=d['preprocessing'], targets=targets)

  def save(self, workdir: str):
    files.write_json(os.path.join(workdir, FILE), self.to_json())

  @classmethod
  def read(cls, workdir: str) -> 'DataInfo':
    with open(os.path.join(workdir, FILE)) as f:
      return cls.from_json(json.load(f))


def _class_names(label) -> tuple[str, ...]:
  return tuple(label.names) if label.names else tuple(
      str(i) for i in range(label.num_classes))


def target_stats(builder, key: str) -> dict:
  """What training needs of the train split's `key`: each target's mean and
  std (standardisation), each label's count of positives (class weights)."""
  source = builder.as_data_source(split='train')
  values_NxR = np.stack([np.asarray(source[i][key], np.float64)
                         for i in range(len(source))])
  if key == 'labels':
    return {'positives': values_NxR.sum(0).astype(int).tolist(),
            'examples': len(values_NxR)}
  return {'mean': values_NxR.mean(0).tolist(),
          'std': values_NxR.std(0).tolist()}


def learns_vocabulary(builder) -> bool:
  """Whether `builder` trains its tokenizer when it is built (so DataInfo
  can only be read off a built dataset)."""
  return getattr(builder.builder_config, 'text_tokenizer', '') == 'subword'


def text_preprocessing(builder) -> dict:
  """The `preprocessing` entry of the tokenizer `builder` wrote text with."""
  return tokenizer.preprocessing(
      getattr(builder.builder_config, 'text_tokenizer', 'bytes'),
      builder.data_dir)


def targets_of(builder, keys=()) -> dict:
  """The DataInfo `targets` of `builder`: names of every target it has; the
  train split's statistics of the `keys` a task needs them for."""
  features = builder.info.features
  named = getattr(builder, 'target_names', dict)()
  out = {}
  for key in TEXT_TARGETS:
    if key in features:
      out[key] = {'length': int(features[key].shape[0]),
                  'tokenizer': text_preprocessing(builder)}
  if 'label' in features:
    out['label'] = {'names': list(_class_names(features['label']))}
  for key in ('labels', 'target'):
    if key in features:
      shape = tuple(features[key].shape)
      names = named.get(key) or [str(i) for i in range(shape[0])]
      out[key] = {'names': list(names)}
  for key in keys:
    if key in out and key != 'label':
      out[key].update(target_stats(builder, key))
  return out


def from_builder(builder, data_config, stats=()) -> DataInfo:
  """The DataInfo of `builder` for the modalities `data_config` asks for,
  with train-split statistics of the target keys `stats`."""
  features = builder.info.features
  targets = targets_of(builder, stats)
  classes = tuple(targets.get('label', {}).get('names', ()))
  inputs, preprocessing = {}, {}
  bconfig = builder.builder_config
  for m in data_config.modalities:
    shape, dtype = tuple(features[m].shape), np.dtype(features[m].np_dtype)
    inputs[m] = (shape, dtype.name)
    if m == 'audio' and len(shape) == 1:  # a waveform, not [T, F] features
      preprocessing[m] = {'sample_rate': int(getattr(bconfig, 'sample_rate',
                                                     16_000))}
    elif m == 'text' and dtype.kind in 'iu':
      preprocessing[m] = text_preprocessing(builder)
    elif m == 'video' and len(shape) == 4:  # frames of a clip file
      preprocessing[m] = {'crop': getattr(bconfig, 'video_crop', 'center')}
    elif m == 'tabular' and hasattr(builder, 'numeric_columns'):
      preprocessing[m] = {'columns': builder.numeric_columns()}
    else:
      preprocessing[m] = {}
  return DataInfo(name=data_config.name, modalities=tuple(
      data_config.modalities), classes=classes, inputs=inputs,
                  preprocessing=preprocessing, targets=targets)
