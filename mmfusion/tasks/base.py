"""What a task is: the contract every entry of the task registry keeps.

A task owns what turns the fused representation into predictions and what
they are scored against: the target keys it reads from a batch, the width of
the head the model puts on the fusion output, the loss, the metrics computed
on the host from a whole split, the primary metric and its direction (for
`best/`, the ablation tables and plots), and what a loaded model's `predict`
returns. The loop, evaluation, `mmfusion.load` and the reports only call these
methods; none of them names a loss or a target key.

Shape legend: B batch, N examples, K members, O head outputs.
"""

import dataclasses
from typing import Any, ClassVar

import numpy as np

from mmfusion import models
from mmfusion.runtime import errors

# Late fusion methods that combine any per-modality outputs (means of them);
# the others mix class distributions (softmax) and are classification's.
ANY_OUTPUT_LATE = ('late_logits', 'late_weighted')
CONTEXT = ('data', 'mesh')  # fields the run sets, not the config


@dataclasses.dataclass(frozen=True)
class Task:
  """Base of every task; the options a config sets are the dataclass fields
  of a subclass (`config.task.<field>`), `data` is the dataset's DataInfo
  and `mesh` the run's device mesh (CONTEXT, set by `tasks.bind`)."""
  data: Any = dataclasses.field(default=None, repr=False, compare=False)
  mesh: Any = dataclasses.field(default=None, repr=False, compare=False)

  TARGETS: ClassVar[tuple[str, ...]] = ()  # batch keys the task reads
  METRICS: ClassVar[dict[str, str]] = {}  # metric -> 'max' | 'min'
  PRIMARY: ClassVar[str] = ''  # what best/, ablation tables and plots use
  TRAIN_METRIC: ClassVar[str] = ''  # shown beside the loss while training
  TABLE: ClassVar[tuple[str, ...]] = ()  # results table columns
  SUBSETS: ClassVar[bool] = True  # also scored on every subset of modalities
  LATE: ClassVar[tuple[str, ...]] = ANY_OUTPUT_LATE  # late fusions that fit

  # ------------------------------------------------- Built before a run ---
  def check_data(self, data) -> None:
    """Fails in one sentence when the dataset lacks what the task reads."""
    missing = [k for k in self.TARGETS if k not in data.targets]
    if missing:
      has = ', '.join(data.targets) or 'no target'
      raise errors.UserError(
          f'task {self.name!r} needs the target {missing[0]!r}, which '
          f'{data.name} does not have (it has {has}); choose a task that '
          f'reads what the data has.')

  def check_fusion(self, fusion: str, stage: str) -> None:
    if stage == 'late' and fusion not in self.LATE:
      raise errors.UserError(
          f'late fusion {fusion!r} mixes class probabilities, which task '
          f'{self.name!r} does not predict; use {" or ".join(self.LATE)}, '
          f'or an early or intermediate fusion.')

  @property
  def name(self) -> str:
    return self.NAME

  @property
  def model_inputs(self) -> tuple[str, ...]:
    """Target-side keys the model reads to predict (a prompt), which
    `predict` and `apply_batch` take as inputs."""
    return ()

  @property
  def stats(self) -> tuple[str, ...]:
    """Target keys whose train-split statistics the task needs."""
    return ()

  @property
  def num_outputs(self) -> int:
    """The head's width O."""
    raise NotImplementedError

  def model(self, model_config):
    """The flax module of a run: encoders -> fusion -> a head of width O."""
    return models.from_config(model_config, self.num_outputs)

  def chance(self) -> float | None:
    """The primary metric of a model that sees no input (the value of the
    empty set of modalities for Shapley contributions); None where the
    data does not fix it."""
    return None

  def direction(self, metric: str) -> str | None:
    """'max' or 'min' for a metric this task reports, else None."""
    base = metric.split('/', 1)[0] if metric not in self.METRICS else metric
    return self.METRICS.get(base)

  # ----------------------------------------------- Inside the jitted step ---
  def loss(self, out, batch) -> tuple[Any, dict]:
    """(scalar loss, {TRAIN_METRIC: scalar}) of the model's output `out`."""
    raise NotImplementedError

  def per_example(self, out, batch) -> dict:
    """What evaluation gathers of each example, device arrays [B, ...]."""
    return {'out': out}

  def outputs_of(self, gathered: dict) -> dict:
    """`outputs` from what `per_example` gathered."""
    return self.outputs(gathered['out'])

  def outputs(self, out) -> dict:
    """A loaded model's outputs of one batch ([B, ...], jittable): what
    `predict` returns besides the embeddings."""
    raise NotImplementedError

  # ---------------------------------------------------------- On the host ---
  def scores(self, gathered: dict, targets: dict, *,
             detail: bool = True) -> dict:
    """Metrics of one member over a split: `gathered` is `per_example`'s
    arrays [N, ...] and `targets` the split's target arrays, padding
    dropped. `detail` adds per-class or per-target entries."""
    raise NotImplementedError

  def mean_outputs(self, outputs_K: dict) -> dict:
    """An ensemble's outputs from its members' ([K, B, ...] each)."""
    return {k: v.mean(0) for k, v in outputs_K.items()}

  def rows(self, outputs: dict, ids) -> list[dict]:
    """One JSON-ready record per example of `outputs` (numpy)."""
    raise NotImplementedError


def plain(i):
  """A numpy scalar id as a JSON value."""
  return i.item() if isinstance(i, np.generic) else i
