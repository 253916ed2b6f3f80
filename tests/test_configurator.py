"""The strict configurator: unknown keys, types, tuples, None, config files."""

import glob
import os
from dataclasses import dataclass

import pytest

from configurator import configure
from kronygpt.errors import ConfigError
from conftest import REPO
from kronygpt.trainer import TrainConfig


def test_overrides_and_types():
    cfg = configure(TrainConfig(), ["--learning_rate=1", "--kron_plan=*: mlp=768x768*1", "--init_from=gpt2",
                                    "--out_dir=a=b", "--compile=True", "--freeze_schedule=freeze:10,release:5*2"],
                    verbose=False)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)   # int accepted for float
    assert cfg.kron_plan == "*: mlp=768x768*1"
    assert cfg.init_from == "gpt2" and cfg.out_dir == "a=b"                    # split on the first '='
    assert cfg.compile is True


def test_key_space_value_and_bare_flags():
    """--key value works like --key=value; a bool field alone is True; a bool may still take True/False."""
    from kronygpt.decompose import DecompConfig
    cfg = configure(DecompConfig(), ["--factors", "2", "--shape", "16x8", "--allocate", "--target_params", "81M",
                                     "--scalars", "False", "--seed", "3", "--calib", "d", "--out", "x.pt", "--force",
                                     "--init", "aware"],
                    verbose=False)
    assert (cfg.factors, cfg.shape, cfg.allocate, cfg.target_params) == (2, "16x8", True, "81M")
    assert cfg.scalars is False and cfg.seed == 3 and cfg.force is True
    with pytest.raises(ConfigError, match="needs a value"):
        configure(DecompConfig(), ["--out", "x.pt", "--factors"], verbose=False)


def test_list_becomes_tuple():
    @dataclass
    class C:
        shape: tuple = ()
    assert configure(C(), ["--shape=[4,2]"], verbose=False).shape == (4, 2)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        configure(TrainConfig(), ["--learnig_rate=3e-4"], verbose=False)


def test_wrong_type_rejected():
    with pytest.raises(ConfigError, match="max_iters must be a int"):
        configure(TrainConfig(), ["--max_iters=1.5"], verbose=False)
    with pytest.raises(ConfigError, match="freeze_schedule"):
        configure(TrainConfig(), ["--freeze_schedule=freeze100"], verbose=False)


def test_none_default_takes_any_value():


    @dataclass
    class C:
        layers: tuple = None
    assert configure(C(), ["--layers=(1,2)"], verbose=False).layers == (1, 2)
    assert configure(C(layers=(1,)), ["--layers=None"], verbose=False).layers is None


def test_config_file_unknown_key(tmp_path):
    p = tmp_path / "c.py"
    p.write_text("import math\nbatch_size = 2 ** 3\nwarmpu_iters = 4\n")
    with pytest.raises(ConfigError, match="warmup_iters"):
        configure(TrainConfig(), [str(p)], verbose=False)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "config", "*.py"))))
def test_every_config_file_loads(path):
    """Every settings file is read by its command's config: distill*.py by train_distillation.py, compress*.py by
    compress.py, decomp*.py by kron_decomp.py, the rest by train.py."""
    name = os.path.basename(path)
    if name.startswith("distill"):
        from kronygpt.distiller import DistillConfig as Config
    elif name.startswith("compress"):
        from kronygpt.pipeline import CompressConfig as Config
    elif name.startswith("decomp"):
        from kronygpt.decompose import DecompConfig as Config
    else:
        Config = TrainConfig
    configure(Config(), [path], verbose=False)
