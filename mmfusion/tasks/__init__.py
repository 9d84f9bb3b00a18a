"""The task registry: what a model is trained to do (`config.task.name`).

  classification  one class per example: softmax cross-entropy on `label`
  multilabel      C labels per example: sigmoid cross-entropy on `labels`
  regression      R continuous targets: L1 or squared error on `target`
  contrastive     two towers aligned over the global batch (InfoNCE, SigLIP)
  generation      text (`caption`) written by a decoder reading the fusion

`config.task` holds the name and the task's options (its dataclass fields,
`base.Task` for the contract): `--config.task.name=regression
--config.task.loss_fn=mse`.
"""

import dataclasses

from mmfusion.nn import registry
from mmfusion.runtime import errors
from mmfusion.tasks import base
from mmfusion.tasks import classification
from mmfusion.tasks import contrastive
from mmfusion.tasks import generation
from mmfusion.tasks import multilabel
from mmfusion.tasks import regression

TASKS: dict[str, type[base.Task]] = {
    'classification': classification.Classification,
    'multilabel': multilabel.Multilabel,
    'regression': regression.Regression,
    'contrastive': contrastive.Contrastive,
    'generation': generation.Generation,
}


def options(task_config) -> dict:
  return {k: v for k, v in dict(task_config).items() if k != 'name'}


def make(task_config, data=None) -> base.Task:
  """The task `config.task` names, with its options, for the dataset `data`
  (a DataInfo; None for the checks that need no data)."""
  name = task_config.get('name') if hasattr(task_config, 'get') else None
  if name not in TASKS:
    raise errors.unknown_name('task', name, TASKS)
  cls = TASKS[name]
  known = [f.name for f in dataclasses.fields(cls)
           if f.name not in base.CONTEXT]
  kwargs = options(task_config)
  bad = sorted(k for k in kwargs if k not in known)
  if bad:
    raise errors.UserError(
        f'task {name!r} has no option {", ".join(map(repr, bad))}; its '
        f'options are: {", ".join(known) or "none"} (fix --config.task).')
  registry.check_types('task', name, cls, kwargs)
  return cls(data=data, **{k: registry.freeze(v) for k, v in kwargs.items()})


def bind(task: base.Task, data, mesh=None) -> base.Task:
  """`task` for the dataset `data` (checked against it) on `mesh`."""
  task.check_data(data)
  return dataclasses.replace(task, data=data, mesh=mesh)
