"""Sweep presets (configs/sweep/) and paper-row configs (configs/method/): every sweep point composes
to the optimizer settings of its paper row, with a unique run folder."""
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
    base = [f"+sweep={preset}"] + (["task=rte"] if primary == "finetune_glue" else [])
    cfg = compose(primary, overrides=base, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["hydra"]["sweep"]["subdir"] == "${run_name}" and raw["output_dir"] == "${hydra:runtime.output_dir}"
    keys = list(params)
    combos = itertools.product(*[str(params[k]).split(",") for k in keys])
    return [compose(primary, overrides=base + [f"{k}={v}" for k, v in zip(keys, combo)]) for combo in combos]


def test_every_preset_exists_and_is_listed():
    assert {p.stem for p in (REPO / "configs" / "sweep").glob("*.yaml")} == set(PRESETS)


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
