"""GLUE configs: every task file against Table A3 (results/paper), every GLUE experiment composes."""
import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
PAPER_COLUMNS = {"cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "mnli": "MNLI",
                 "qnli": "QNLI", "qqp": "QQP"}


def compose_glue(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="finetune_glue", overrides=list(overrides))


def table_a3():
    with open(ROOT / "results/paper/tableA3_glue_lr.csv") as f:
        rows = list(csv.DictReader(f))
    return {r["lr"]: r for r in rows}


@pytest.mark.parametrize("task", sorted(PAPER_COLUMNS))
def test_task_protocol_matches_table_a3(task):
    cfg = compose_glue(f"task={task}")
    rows = table_a3()
    assert cfg.optimizer.lr == float(rows["chosen_lr"][PAPER_COLUMNS[task]])
    assert cfg.trainer.total_batch_size == int(rows["batch_size"][PAPER_COLUMNS[task]])
    assert (cfg.model.name, cfg.seed, cfg.trainer.epochs, cfg.trainer.max_length) == ("roberta_base", 1234, 30, 512)
    assert (cfg.trainer.scheduler, cfg.trainer.warmup_steps) == ("linear", 0)
    opt = cfg.optimizer
    assert (opt.name, opt.target_modules, opt.wavelet, opt.level, opt.alpha) == ("gwt", "encoder_linear", "haar", 2, 2.0)


def test_galore_and_adamw_get_the_glue_settings_and_the_task_lr():
    galore = compose_glue("task=rte", "optimizer=galore").optimizer
    assert (galore.target_modules, galore.rank, galore.scale, galore.lr) == ("encoder_linear", 0.25, 2.0, 3e-6)
    adamw = compose_glue("task=rte", "optimizer=adamw").optimizer
    assert adamw.name == "adamw" and adamw.lr == 3e-6 and "target_modules" not in adamw
    assert compose_glue("task=rte", "optimizer=gwt", "optimizer.alpha=1.5").optimizer.alpha == 1.5  # CLI wins


# Table 3's 24 cells are the sweep configs/sweep/table3.yaml, tested in test_sweeps.py.


def test_table_a3_sweep_presets_cover_the_grid():
    rows = table_a3()
    for preset, tasks in (("tableA3", ("cola", "stsb", "mrpc", "rte")), ("tableA3_large", ("sst2", "mnli", "qnli", "qqp"))):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="finetune_glue", overrides=[f"experiment={preset}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params.task.split(",") == list(tasks)
        grid = [float(x) for x in params["optimizer.lr"].split(",")]
        paper = [float(lr) for lr, r in rows.items()
                 if lr[0].isdigit() and r[PAPER_COLUMNS[tasks[0]]].strip()]
        assert grid == paper


@pytest.mark.parametrize("task", sorted(PAPER_COLUMNS))
def test_every_task_and_optimizer_passes_the_loops_config_check(task):
    """Config files can add keys Hydra does not question; the loop's check (gwt_lab.loop.check_config)
    must accept every shipped task x optimizer x model combination."""
    import finetune_glue
    from gwt_lab.loop import check_config

    for optimizer in ("gwt", "galore", "adamw"):
        for model in ("roberta_base", "roberta_tiny", "minilm_l6"):
            cfg = compose_glue(f"task={task}", f"optimizer={optimizer}", f"model={model}")
            assert check_config(cfg, finetune_glue.GlueFinetuning(cfg)) is None, (task, optimizer, model)
