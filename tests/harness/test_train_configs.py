"""Every train_llama config composes, and every optimizer preset builds on llama_tiny."""
import pytest
import yaml

from gwt_lab.models import LLAMA_ARCH_KEYS, build_llama
from gwt.optim import build_optimizer
from tests.helpers import CONFIGS, compose_cfg

EXPERIMENTS = sorted(p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix()
                     for p in (CONFIGS / "experiment").rglob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))
TABLE1 = {"full_rank": ("adamw", {}), "haar2": ("gwt", {"wavelet": "haar", "level": 2, "alpha": 0.25, "lr": 0.01}),
          "db2": ("gwt", {"wavelet": "db2", "level": 2, "alpha": 0.25, "lr": 0.01}),
          "galore": ("galore", {"rank": 0.25, "update_proj_gap": 200, "scale": 0.25, "lr": 0.01})}


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


def test_table1_cells_follow_the_paper_protocol():
    cells = [e for e in EXPERIMENTS if e.startswith("table1/")]
    assert len(cells) == 16
    for size, steps, adam_lr in (("llama_60m", 10000, 1e-3), ("llama_130m", 20000, 1e-3),
                                 ("llama_350m", 60000, 1e-3), ("llama_1b", 100000, 5e-4)):
        for method, (opt_name, expected) in TABLE1.items():
            cfg = compose_cfg([f"experiment=table1/{size}_{method}"], base=[])
            t = cfg.trainer
            assert (cfg.model.name, cfg.optimizer.name, cfg.data.name) == (size, opt_name, "c4")
            assert (t.max_steps, t.total_batch_size, t.seq_len, t.warmup_ratio, t.min_lr_ratio, t.scheduler,
                    t.eval_tokens) == (steps, 512, 256, 0.1, 0.1, "cosine", 10_000_000)
            assert cfg.optimizer.get("lr") == (adam_lr if opt_name == "adamw" else 0.01)
            for key, value in expected.items():
                assert cfg.optimizer[key] == value, (size, method, key)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_preset_builds(name):
    """Each YAML is `name:` plus build_optimizer keyword arguments, and every key carries a comment."""
    raw = (CONFIGS / "optimizer" / f"{name}.yaml").read_text()
    for line in raw.splitlines():
        if line and not line.startswith("#"):
            assert "#" in line or line.startswith("name:"), f"{name}.yaml: uncommented key {line!r}"
    cfg = yaml.safe_load(raw)
    model_cfg = compose_cfg([], base=["model=llama_tiny", "model.vocab_size=256"]).model
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
