"""Sweep presets (configs/sweep/) and paper-row configs (configs/method/): every sweep point composes
to the optimizer settings of its paper row, with a unique run folder; Tables 1 and 3 (sweeps over
model x method and task x optimizer) follow the paper protocol in every cell."""
import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
PRESETS = {  # preset -> (entrypoint config, number of runs)
    "table1": ("train_llama", 16), "table1_level3": ("train_llama", 9), "table2": ("train_llama", 3),
    "table3": ("finetune_glue", 24), "table4": ("train_llama", 15), "fig2": ("train_llama", 21),
    "fig3_alpha": ("train_llama", 8), "fig3_level": ("train_llama", 10), "fig5": ("train_llama", 4),
    "fig6": ("train_llama", 6),
}
TABLE1 = {"full_rank": ("adamw", {}), "haar2": ("gwt", {"wavelet": "haar", "level": 2, "alpha": 0.25, "lr": 0.01}),
          "db2_2": ("gwt", {"wavelet": "db2", "level": 2, "alpha": 0.25, "lr": 0.01}),
          "galore_1_4": ("galore", {"rank": 0.25, "update_proj_gap": 200, "scale": 0.25, "lr": 0.01})}
TABLE1_SIZES = {"llama_60m": (10000, 1e-3), "llama_130m": (20000, 1e-3), "llama_350m": (60000, 1e-3),
                "llama_1b": (100000, 5e-4)}  # Table A1 steps, Appendix A.1 AdamW lr


_CACHE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def hydra_configs():
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        yield


def sweep_points(primary: str, preset: str) -> list:
    """Every sweep point of a preset, composed (cached: composing is slow)."""
    if (primary, preset) not in _CACHE:
        _CACHE[primary, preset] = _compose_points(primary, preset)
    return _CACHE[primary, preset]


def _compose_points(primary: str, preset: str) -> list:
    base = [f"+sweep={preset}"]
    cfg = compose(primary, overrides=base, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["hydra"]["sweep"]["subdir"] == "${run_name}" and raw["output_dir"] == "${hydra:runtime.output_dir}"
    assert cfg.hydra.sweep.dir == f"{cfg.paths.sweeps}/{Path(cfg.hydra.sweep.dir).name}"
    keys = list(params)
    combos = itertools.product(*[str(params[k]).split(",") for k in keys])
    return [compose(primary, overrides=base + [f"{k}={v}" for k, v in zip(keys, combo)]) for combo in combos]


def test_every_preset_exists_and_is_listed():
    presets = {p.stem for p in (REPO / "configs" / "sweep").glob("*.yaml")}
    assert {p for p in presets if not p.startswith("reduced_")} == set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_points_are_unique_runs(preset):
    primary, count = PRESETS[preset]
    points = sweep_points(primary, preset)
    assert len(points) == count
    assert len({p.run_name for p in points}) == count  # one run folder per point


def test_paper_rows_get_their_optimizer_settings():
    rows = {p.run_name: p.optimizer for p in sweep_points("train_llama", "fig2")}
    alphas = sorted(p.optimizer.alpha for p in sweep_points("train_llama", "fig3_alpha"))
    limiters = {p.run_name: p.optimizer.limiter for p in sweep_points("train_llama", "fig5")}
    table2 = sweep_points("train_llama", "table2")
    assert rows["llama_130m-haar3"].name == "gwt" and rows["llama_130m-haar3"].level == 3
    assert rows["llama_60m-galore_1_2"].rank == 0.5 and rows["llama_350m-galore_1_8"].rank == 0.125
    assert rows["llama_60m-full_rank"].name == "adamw"
    assert alphas == [0.1, 0.1, 0.15, 0.15, 0.2, 0.2, 0.25, 0.25]
    assert limiters == {"llama_60m-haar2": 1.01, "llama_60m-haar2_no_limiter": None,
                        "llama_130m-haar2": 1.01, "llama_130m-haar2_no_limiter": None}
    assert {p.model.name for p in table2} == {"llama_1b"} and {p.trainer.eval_every for p in table2} == {20000}
    table1 = {p.run_name for p in sweep_points("train_llama", "table1")}
    assert {p.run_name for p in table2} <= table1  # Table 2 reuses Table 1's run folders


def test_table1_cells_follow_the_paper_protocol():
    cells = sweep_points("train_llama", "table1")
    assert len(cells) == 16
    by_cell = {(c.model.name, c.run_name.split("-", 1)[1]): c for c in cells}
    assert set(by_cell) == set(itertools.product(TABLE1_SIZES, TABLE1))
    for (size, method), cfg in by_cell.items():
        steps, adam_lr = TABLE1_SIZES[size]
        opt_name, expected = TABLE1[method]
        t = cfg.trainer
        assert (cfg.model.name, cfg.optimizer.name, cfg.data.name) == (size, opt_name, "c4")
        assert (t.max_steps, t.total_batch_size, t.seq_len, t.warmup_ratio, t.min_lr_ratio, t.scheduler,
                t.eval_tokens) == (steps, 512, 256, 0.1, 0.1, "cosine", 10_000_000)
        assert cfg.optimizer.get("lr") == (adam_lr if opt_name == "adamw" else 0.01)
        for key, value in expected.items():
            assert cfg.optimizer[key] == value, (size, method, key)


def test_one_table1_cell_composes_without_a_sweep():
    cfg = compose("train_llama", overrides=["model=llama_1b", "method=full_rank"])
    assert (cfg.run_name, cfg.optimizer.name, cfg.optimizer.lr) == ("llama_1b-full_rank", "adamw", 5e-4)
    cfg = compose("train_llama", overrides=["model=llama_350m", "method=db2_2"])
    assert (cfg.optimizer.wavelet, cfg.optimizer.level, cfg.trainer.max_steps) == ("db2", 2, 60000)


def test_table3_has_every_cell_with_the_glue_protocol():
    cells = sweep_points("finetune_glue", "table3")
    tasks = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")
    assert {(c.task.name, c.optimizer.name) for c in cells} == set(itertools.product(tasks, ("adamw", "gwt", "galore")))
    for cfg in cells:
        assert cfg.model.name == "roberta_base" and cfg.run_name == f"table3-{cfg.task.name}-{cfg.optimizer.name}"
        task_lr = compose("finetune_glue", overrides=[f"task={cfg.task.name}"]).optimizer.lr
        assert cfg.optimizer.lr == task_lr  # every method runs with the task's learning rate
        if cfg.optimizer.name == "gwt":
            assert (cfg.optimizer.target_modules, cfg.optimizer.wavelet, cfg.optimizer.level,
                    cfg.optimizer.alpha) == ("encoder_linear", "haar", 2, 2.0)
        elif cfg.optimizer.name == "galore":
            assert (cfg.optimizer.target_modules, cfg.optimizer.rank, cfg.optimizer.scale) == ("encoder_linear", 0.25, 2.0)
        else:
            assert "target_modules" not in cfg.optimizer
