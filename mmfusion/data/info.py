"""What a trained model needs to know of its dataset, without the dataset.

`DataInfo` is read off a TFDS builder when a run is built and written to the
workdir (`data_info.json`), so `mmfusion.load` can rebuild the model and
preprocess raw inputs where the data (or the manifest) is not at hand.
"""

import dataclasses
import json
import os

import numpy as np

from mmfusion.runtime import files

FILE = 'data_info.json'


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Classes, per-example input shapes and preprocessing of one dataset."""
  name: str  # config.data.name
  modalities: tuple[str, ...]  # config.data.modalities, in config order
  classes: tuple[str, ...]  # class names, index = label id
  inputs: dict  # modality -> (shape of one example, numpy dtype name)
  # modality -> how raw inputs become arrays: {'sample_rate': 16000} for
  # audio, {'tokenizer': 'bytes'} for token ids, {'columns': [...]} for
  # manifest numbers.
  preprocessing: dict

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def batch_spec(self, batch_size: int) -> dict:
    """{key: (shape, dtype)} of a batch in the pipeline's contract."""
    spec = {m: ((batch_size,) + tuple(shape), np.dtype(dtype))
            for m, (shape, dtype) in self.inputs.items()}
    spec['label'] = ((batch_size,), np.dtype(np.int32))
    for m in self.modalities:
      spec[f'present/{m}'] = ((batch_size,), np.dtype(np.bool_))
    return spec

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['inputs'] = {m: [list(s), t] for m, (s, t) in self.inputs.items()}
    return d

  @classmethod
  def from_json(cls, d: dict) -> 'DataInfo':
    return cls(name=d['name'], modalities=tuple(d['modalities']),
               classes=tuple(d['classes']),
               inputs={m: (tuple(s), t) for m, (s, t) in d['inputs'].items()},
               preprocessing=d['preprocessing'])

  def save(self, workdir: str):
    files.write_json(os.path.join(workdir, FILE), self.to_json())

  @classmethod
  def read(cls, workdir: str) -> 'DataInfo':
    with open(os.path.join(workdir, FILE)) as f:
      return cls.from_json(json.load(f))


def from_builder(builder, data_config) -> DataInfo:
  """The DataInfo of `builder` for the modalities `data_config` asks for."""
  features = builder.info.features
  label = features['label']
  classes = tuple(label.names) if label.names else tuple(
      str(i) for i in range(label.num_classes))
  inputs, preprocessing = {}, {}
  bconfig = builder.builder_config
  for m in data_config.modalities:
    shape, dtype = tuple(features[m].shape), np.dtype(features[m].np_dtype)
    inputs[m] = (shape, dtype.name)
    if m == 'audio':
      preprocessing[m] = {'sample_rate': int(getattr(bconfig, 'sample_rate',
                                                     16_000))}
    elif m == 'text' and dtype.kind in 'iu':
      preprocessing[m] = {'tokenizer': 'bytes'}
    elif m == 'tabular' and hasattr(builder, 'numeric_columns'):
      preprocessing[m] = {'columns': builder.numeric_columns()}
    else:
      preprocessing[m] = {}
  return DataInfo(name=data_config.name, modalities=tuple(
      data_config.modalities), classes=classes, inputs=inputs,
                  preprocessing=preprocessing)
