"""`synthetic_interactions`: redundancy, uniqueness and synergy, on demand.

The benchmark of multimodal interaction studies (Liang et al. 2023,
"Quantifying & Modeling Multimodal Interactions"; Williams & Beer 2010 for the
partial information decomposition it measures). Every modality m sees one
categorical latent z_m in [0, C) through a Gaussian feature vector

    x_m = mu_m[z_m] + noise * eps,   mu_m[c] ~ N(0, I_{d_m}),  eps ~ N(0, I)

and the mechanism decides how the latents and the label y relate:

    redundancy       y ~ U(C), every z_m = y              (shared information)
    uniqueness_<m>   y ~ U(C), z_m = y, the others ~ U(C) (only modality m knows)
    synergy          z_m ~ U(C), y = sum_m z_m mod C      (XOR for C = 2: no
                                                          modality alone knows)
    mixture          each example draws one of the above by `weights`

The `regression_*` configs (`latent='continuous'`) have the same structure with
a Gaussian latent u_m ~ N(0, 1) per modality, seen along a fixed direction,

    x_m = a_m u_m + noise * eps,   a_m ~ N(0, I_{d_m}),

and a float `target` y (variance 1) in place of the label:

    redundancy       s ~ N(0, 1), every u_m = s, y = s
    uniqueness_<m>   s ~ N(0, 1), u_m = s, the others ~ N(0, 1), y = s
    synergy          u_m ~ N(0, 1), y = prod_m u_m   (E[y | u_m] = 0 for every
                                                     m: no modality alone, nor
                                                     a sum of one prediction
                                                     per modality, fits y)
    mixture          each example draws one of the above by `weights`

Prototypes and directions are shared by all splits; every split has its own
seed, so building twice gives the same files.
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

MECHANISMS = ('redundancy', 'uniqueness', 'synergy', 'mixture')
LATENTS = ('categorical', 'continuous')
TWO_MODALITIES = (('image', 100), ('text', 50))
THREE_MODALITIES = TWO_MODALITIES + (('tabular', 20),)


@dataclasses.dataclass(eq=False)
class SyntheticInteractionsConfig(tfds.core.BuilderConfig):
  """One interaction mechanism over named Gaussian modalities."""
  mechanism: str = 'redundancy'
  # 'categorical': a `label` of num_classes; 'continuous': a float `target`.
  latent: str = 'categorical'
  unique_modality: str | None = None  # the informative one, for uniqueness
  modalities: tuple[tuple[str, int], ...] = TWO_MODALITIES  # (name, dim)
  num_classes: int = 10
  noise: float = 3.0  # per-dimension std of eps; prototypes have std 1
  # Mixture weights over (redundancy, uniqueness of each modality, synergy).
  weights: tuple[float, ...] | None = None
  num_train: int = 10_000
  num_validation: int = 2_000
  num_test: int = 2_000
  seed: int = 0


def _named_configs():
  configs = []
  for mods, suffix in ((TWO_MODALITIES, ''), (THREE_MODALITIES, '_3mod')):
    names = [m for m, _ in mods]
    configs.append(SyntheticInteractionsConfig(
        name='redundancy' + suffix, mechanism='redundancy', modalities=mods,
        description=f'Label shared by all of {names}.'))
    for m in names:
      configs.append(SyntheticInteractionsConfig(
          name=f'uniqueness_{m}{suffix}', mechanism='uniqueness',
          unique_modality=m, modalities=mods,
          description=f'Label known only to {m}.'))
    configs.append(SyntheticInteractionsConfig(
        name='synergy' + suffix, mechanism='synergy', modalities=mods,
        description=f'Label = sum of the latents of {names} mod C.'))
    configs.append(SyntheticInteractionsConfig(
        name='mixture' + suffix, mechanism='mixture', modalities=mods,
        description='Equal mixture of redundancy, each uniqueness, synergy.'))
  for mods, suffix in ((TWO_MODALITIES, ''), (THREE_MODALITIES, '_3mod')):
    names = [m for m, _ in mods]
    regression = functools.partial(SyntheticInteractionsConfig,
                                   latent='continuous', modalities=mods)
    configs.append(regression(
        name='regression_redundancy' + suffix, mechanism='redundancy',
        description=f'Target = the latent shared by all of {names}.'))
    for m in names:
      configs.append(regression(
          name=f'regression_uniqueness_{m}{suffix}', mechanism='uniqueness',
          unique_modality=m, description=f'Target = the latent of {m}.'))
    configs.append(regression(
        name='regression_synergy' + suffix, mechanism='synergy',
        description=f'Target = product of the latents of {names}.'))
    configs.append(regression(
        name='regression_mixture' + suffix, mechanism='mixture',
        description='Equal mixture of redundancy, each uniqueness, synergy.'))
  return configs


def _mechanism_ids(config: SyntheticInteractionsConfig, n: int, rng):
  """[(mechanism, unique modality)] and which one each of `n` examples uses
  (a draw from `rng` only for a mixture)."""
  names = [m for m, _ in config.modalities]
  per_mechanism = [('redundancy', None)] + [('uniqueness', m) for m in names]
  per_mechanism += [('synergy', None)]
  if config.mechanism == 'mixture':
    w = np.asarray(config.weights or [1.0] * len(per_mechanism), np.float64)
    choice = rng.choice(len(per_mechanism), size=n, p=w / w.sum())
  else:
    choice = np.full(n, per_mechanism.index(
        (config.mechanism, config.unique_modality)))
  return per_mechanism, choice


def latents(config: SyntheticInteractionsConfig, n: int, rng):
  """Labels [n] and one latent per modality, each [n], for `n` examples."""
  names = [m for m, _ in config.modalities]
  c = config.num_classes
  per_mechanism, choice = _mechanism_ids(config, n, rng)
  y = rng.integers(0, c, n)
  z = {m: rng.integers(0, c, n) for m in names}
  synergy_y = sum(z.values()) % c
  for k, (mech, unique) in enumerate(per_mechanism):
    rows = choice == k
    for m in names:
      if mech == 'redundancy' or (mech == 'uniqueness' and m == unique):
        z[m] = np.where(rows, y, z[m])
    if mech == 'synergy':
      y = np.where(rows, synergy_y, y)
  return y, z


def continuous_latents(config: SyntheticInteractionsConfig, n: int, rng):
  """Targets [n] and one N(0, 1) latent per modality, each [n]."""
  names = [m for m, _ in config.modalities]
  per_mechanism, choice = _mechanism_ids(config, n, rng)
  s = rng.standard_normal(n)
  u = {m: rng.standard_normal(n) for m in names}
  y = np.prod([u[m] for m in names], axis=0)
  for k, (mech, unique) in enumerate(per_mechanism):
    rows = choice == k
    for m in names:
      if mech == 'redundancy' or (mech == 'uniqueness' and m == unique):
        u[m] = np.where(rows, s, u[m])
    if mech != 'synergy':
      y = np.where(rows, s, y)
  return y, u


def generate(config: SyntheticInteractionsConfig, split_index: int, n: int):
  """Arrays of one split: {modality: float32 [n, d_m]} and 'label' int64 [n]
  (categorical latents) or 'target' float32 [n, 1] (continuous)."""
  proto_rng = np.random.default_rng([config.seed, 0])
  rng = np.random.default_rng([config.seed, 1 + split_index])
  if config.latent == 'continuous':
    directions = {m: proto_rng.standard_normal(d) for m, d in config.modalities}
    y, u = continuous_latents(config, n, rng)
    means = {m: u[m][:, None] * directions[m] for m, _ in config.modalities}
    out = {'target': y[:, None].astype(np.float32)}
  else:
    prototypes = {m: proto_rng.standard_normal((config.num_classes, d))
                  for m, d in config.modalities}
    y, z = latents(config, n, rng)
    means = {m: prototypes[m][z[m]] for m, _ in config.modalities}
    out = {'label': y.astype(np.int64)}
  for m, d in config.modalities:
    x = means[m] + config.noise * rng.standard_normal((n, d))
    out[m] = x.astype(np.float32)
  return out


def check(config: SyntheticInteractionsConfig):
  """Raises ValueError naming the first field that cannot work."""
  names = [m for m, _ in config.modalities]
  if config.latent not in LATENTS:
    raise ValueError(f'latent {config.latent!r} is not one of {LATENTS}')
  if config.mechanism not in MECHANISMS:
    raise ValueError(f'mechanism {config.mechanism!r} is not one of {MECHANISMS}')
  if config.mechanism == 'uniqueness' and config.unique_modality not in names:
    raise ValueError(f'unique_modality {config.unique_modality!r} is not one of '
                     f'the modalities {names}')
  if config.weights is not None and len(config.weights) != len(names) + 2:
    raise ValueError(f'weights needs {len(names) + 2} entries (redundancy, '
                     f'uniqueness of each of {names}, synergy)')
  if config.num_classes < 2:
    raise ValueError('num_classes must be at least 2')


class SyntheticInteractions(tfds.core.GeneratorBasedBuilder):
  """Gaussian modalities whose label (or target) is redundant, unique or
  synergistic."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = _named_configs()

  def _info(self):
    config = self.builder_config
    check(config)
    features = {m: tfds.features.Tensor(shape=(d,), dtype=np.float32)
                for m, d in config.modalities}
    if config.latent == 'continuous':
      features['target'] = tfds.features.Tensor(shape=(1,), dtype=np.float32)
    else:
      features['label'] = tfds.features.ClassLabel(
          num_classes=config.num_classes)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage='https://arxiv.org/abs/2302.12247')

  def target_names(self) -> dict[str, tuple[str, ...]]:
    """Names of the `target` values: the y of the module docstring."""
    if self.builder_config.latent == 'continuous':
      return {'target': ('y',)}
    return {}

  def _split_generators(self, dl_manager):
    del dl_manager  # Synthesized on the spot: nothing to download.
    c = self.builder_config
    sizes = {'train': c.num_train, 'validation': c.num_validation,
             'test': c.num_test}
    return {split: self._generate_examples(i, n)
            for i, (split, n) in enumerate(sizes.items())}

  def _generate_examples(self, split_index, n):
    arrays = generate(self.builder_config, split_index, n)
    for i in range(n):
      yield i, {k: v[i] for k, v in arrays.items()}
