"""Every train_llama config composes, and every optimizer preset builds on llama_tiny."""
import pytest
from omegaconf import OmegaConf

from gwt_lab.models import LLAMA_ARCH_KEYS, build_llama
from gwt.optim import build_optimizer
from tests.helpers import CONFIGS, compose_cfg

EXPERIMENTS = sorted(p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix()
                     for p in (CONFIGS / "experiment").rglob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))


def _train_llama_experiment(name):
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    return "/model: llama" in text or name == "demo" or name.startswith(("table1/", "pretrain"))


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if _train_llama_experiment(e)])
def test_experiment_composes(name):
    cfg = compose_cfg([f"experiment={name}"], base=[])
    assert cfg.model.name.startswith("llama") and cfg.optimizer.name and cfg.data.name
    assert cfg.trainer.max_steps >= 1 and cfg.trainer.total_batch_size % cfg.trainer.micro_batch_size == 0
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")


# Table 1's 16 cells are the sweep configs/sweep/table1.yaml (model x method), tested in test_sweeps.py.


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_preset_builds(name):
    """Each YAML is `name:` plus build_optimizer keyword arguments, and every key carries a comment."""
    raw = (CONFIGS / "optimizer" / f"{name}.yaml").read_text()
    for line in raw.splitlines():
        if line and not line.startswith("#"):
            assert "#" in line or line.startswith("name:"), f"{name}.yaml: uncommented key {line!r}"
    composed = compose_cfg([f"optimizer={name}"], base=["model=llama_tiny", "model.vocab_size=256"])
    cfg = OmegaConf.to_container(composed.optimizer, resolve=True)  # with the presets it inherits (defaults list)
    model_cfg = composed.model
    model = build_llama(**{k: model_cfg[k] for k in LLAMA_ARCH_KEYS}, seed=0)
    optimizer = build_optimizer(model, **cfg)
    assert len(optimizer.param_groups) >= 1


def test_every_config_group_option_composes():
    for group in ("model", "data", "logger"):
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            if group == "model" and not path.stem.startswith("llama"):
                continue
            cfg = compose_cfg([f"{group}={path.stem}"], base=[])
            assert cfg[group].name == path.stem


def test_every_experiment_and_group_option_passes_the_loops_config_check():
    """Hydra accepts a key that a config file adds (e.g. a misspelt `trainer.eval_evry` in an experiment);
    the loop's check (gwt_lab.loop.check_config) must find none in the shipped files."""
    import train_llama
    from gwt_lab.loop import check_config

    runs = [[f"experiment={name}"] for name in EXPERIMENTS if _train_llama_experiment(name)
            and "???" not in (CONFIGS / "experiment" / f"{name}.yaml").read_text()]  # bases of other experiments
    runs += [[f"optimizer={name}"] for name in OPTIMIZERS]
    runs += [[f"{group}={p.stem}"] for group in ("data", "logger") for p in sorted((CONFIGS / group).glob("*.yaml"))]
    runs += [[f"model={p.stem}"] for p in sorted((CONFIGS / "model").glob("*.yaml")) if "/model: " not in p.read_text()
             and p.stem.startswith(("llama", "qwen"))]
    for overrides in runs:
        cfg = compose_cfg(overrides, base=[])
        assert check_config(cfg, train_llama.Pretraining(cfg)) is None, overrides
