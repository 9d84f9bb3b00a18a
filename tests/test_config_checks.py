"""Every config key with a wrong-typed and an out-of-range value: one line on
stderr, exit status 2, the workdir untouched, never a traceback."""

import os
import subprocess
import sys

import pytest

from mmfusion import main, schema
from tests.helpers import ROOT, main_command, subprocess_env, tiny_config

# key: (a value of the wrong type, a value of the right type out of range).
BAD = {
    'seed': ('0', -1),
    'batch_size': (16.0, 0),
    'total_steps': ('12', -5),
    'eval_every': (None, 0),
    'checkpoint_every': ([4], 0),
    'log_every': (True, 0),
    'num_devices': ('all', -1),
    'fsdp': ('yes', 2),
    'fsdp_min_size': (1.5, -1),
    'grad_accum_steps': ('2', 0),
    'keep_checkpoints': (3.0, 0),
    'task': ('classification', {'name': 'nope'}),
    'best_metric': (1, 'precision'),
    'best_mode': (True, 'maximum'),
    'vmap.size': ('2', 0),
    'vmap.key': (0, 'optimizer.b1'),
    'vmap.values': (0.1, (0.1, -0.2)),
    'data.name': (7, ''),
    'data.modalities': ('image', ()),
    'data.data_dir': (3, ''),
    'data.overrides': ('num_train=4', {1: 2}),
    'data.modality_dropout': (0.5, {'image': 1.5}),
    'data.extra_eval_splits': ('train', ('',)),
    'data.augment': ('reverb', {1: 2}),
    'model.fusion': (3, ''),
    'model.fusion_kwargs': ('rank=4', {'nope': 1}),
    'model.encoders': ('mlp', {'image': {'features': 64}}),
    'model.early_encoder': ('mlp', {'name': ''}),
    'model.head_hidden': (128, (0,)),
    'model.dtype': (32, 'float8'),
    'model.remat': ('no', 1),
    'model.kernels': (None, 'cuda'),
    'optimizer.name': (None, 'sgd'),
    'optimizer.learning_rate': ('3e-3', 0.0),
    'optimizer.warmup_steps': (1.5, -1),
    'optimizer.final_lr_fraction': ('0.1', 1.5),
    'optimizer.b1': ('0.9', 1.0),
    'optimizer.b2': ([0.9], -0.1),
    'optimizer.weight_decay': ('none', -1e-4),
    'optimizer.grad_clip_norm': ('off', -1.0),
}
# Values in range for the key alone, impossible with the rest of the config
# or the data (checked by `build`, after `schema`).
BAD_TOGETHER = {
    'batch_size': 100_000,  # the tiny data has 256 training examples
    'grad_accum_steps': 3,  # does not divide 16
    'vmap.values': (0.1, 0.2),  # with vmap.size 1 and key learning_rate
    'data.modality_dropout': {'audio': 0.5},  # not a modality of the run
    'data.extra_eval_splits': ('nope',),
    'data.augment': {'audio': {'reverb': 0.5}},  # not a modality of the run
    'task': {'name': 'regression'},  # the data has no regression target
    'best_metric': 'auroc',  # 10 classes
    'best_mode': 'min',  # keeps the worst accuracy
    'data.modalities': ('image', 'audio'),  # the data has no audio
    'model.fusion': 'fuse_everything',
    'model.encoders': {'image': {'name': 'mlp', 'width': 3}},
}


def test_every_key_is_swept():
  assert set(BAD) == set(schema.KEYS)


def _set(config, key, value):
  *path, last = key.split('.')
  node = config
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[last] = value
  if key == 'vmap.values' and value == (0.1, 0.2):
    config.vmap.key = 'optimizer.learning_rate'


CASES = ([(k, v[0]) for k, v in BAD.items()] +
         [(k, v[1]) for k, v in BAD.items()] + list(BAD_TOGETHER.items()))


@pytest.mark.parametrize('key, value', CASES,
                         ids=[f'{k}={v!r}' for k, v in CASES])
def test_a_bad_value_is_one_line_exit_2_and_no_workdir(key, value, tmp_path,
                                                       data_dir, capsys):
  config = tiny_config(data_dir)
  _set(config, key, value)
  workdir = str(tmp_path / 'run')
  with pytest.raises(SystemExit) as e:
    main.train(config, workdir)
  err = capsys.readouterr().err
  assert e.value.code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('mmfusion: error: '), err
  assert lines[0].endswith('.'), err
  # The sentence names what to fix: the key, or (a module's option, a
  # dataset's split) the name inside its value.
  named = NAMED.get(key, key)
  assert named in lines[0], (named, err)
  assert not os.path.exists(workdir)


# What the sentence about a key names when it is not the key itself.
NAMED = {'model.encoders': 'model.encoders', 'task': 'task',
         'model.fusion': 'fusion',
         'data.overrides': 'overrides', 'model.fusion_kwargs': 'fusion',
         'model.early_encoder': 'model.early_encoder',
         'data.extra_eval_splits': 'data.extra_eval_splits'}


# The command itself (the sweep above calls what it calls after parsing):
# an out-of-range value, and a wrong-typed one its flag parser refuses.
@pytest.mark.parametrize('flag', ['--config.batch_size=-1',
                                  '--config.batch_size=abc'])
def test_the_command_says_it_in_one_line_and_writes_nothing(flag, tmp_path,
                                                            data_dir):
  workdir = str(tmp_path / 'run')
  result = subprocess.run(main_command(workdir, data_dir, flag),
                          cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().count('\n') == 0, result.stderr
  assert result.stderr.startswith('mmfusion: error: ')
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('body, where', [
    ('def get_config(:\n  pass\n', 'line 1: SyntaxError'),
    ('def get_config():\n  x = 1\n  raise ValueError("no data here")\n',
     'line 3: ValueError: no data here'),
    ('import not_a_module_anywhere\n', "line 1: ModuleNotFoundError"),
])
def test_a_config_file_that_does_not_load_names_its_file_and_line(
    body, where, tmp_path):
  path = tmp_path / 'my_config.py'
  path.write_text(body)
  result = subprocess.run(
      [sys.executable, '-m', 'mmfusion.main', f'--config={path}',
       f'--workdir={tmp_path / "run"}'], cwd=ROOT, env=subprocess_env(),
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().count('\n') == 0, result.stderr
  assert f'{path}, {where}' in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_the_readme_states_the_resume_rules_the_code_applies():
  with open(os.path.join(ROOT, 'README.md')) as f:
    section = f.read().split('### What may change on resume')[1].split('###')[0]
  named = {k for k in schema.KEYS if f'`{k}`' in section}
  assert schema.MAY_CHANGE <= named
  assert schema.MAY_CHANGE <= set(schema.KEYS)
  assert schema.OVERRIDABLE <= set(schema.KEYS) - schema.MAY_CHANGE
  assert {'batch_size', 'data.modality_dropout'} <= named
  assert "the optimizer's hyperparameters" in section
  assert all(k.startswith('optimizer.') for k in
             schema.OVERRIDABLE - {'batch_size', 'data.modality_dropout'})
