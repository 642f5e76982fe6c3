"""One home per fact: every experiment and sweep preset composes; where a config has to repeat a
fact stated in Python (configs cannot import it), it agrees with that home; the harness modules
import their shared facts instead of restating them."""
import inspect
import json
import re
from pathlib import Path

import pytest
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gwt_lab.constants import GLUE_SCORE_KEYS, IGNORE_INDEX
from gwt_lab.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix()
                     for p in (CONFIGS / "experiment").rglob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))


def _compose(primary, overrides, hydra_node=False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(primary, overrides=list(overrides), return_hydra_config=hydra_node)


def _primary(text: str, name: str) -> str:
    """The entrypoint a preset belongs to: GLUE presets name finetune_glue.py or set a task."""
    return "finetune_glue" if "finetune_glue.py" in text or "/task" in text or "glue" in name else "train_llama"


def _resolve_all(cfg) -> dict:
    """Every key resolved (a dangling interpolation raises), except those that need a running Hydra job."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in raw.items():
        if key == "hydra" or (isinstance(value, str) and ("${hydra:" in value or "${now:" in value)):
            continue
        if key == "output_dir":
            continue  # may use resolvers the entrypoint registers (run suffix, time stamp)
        if OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)
        else:
            getattr(cfg, key)
    return raw


def _base_overrides(primary: str, text: str) -> list:
    return ["task=rte"] if primary == "finetune_glue" and "/task" not in text else []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes(name):
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    primary = _primary(text, name)
    cfg = _compose(primary, _base_overrides(primary, text) + [f"experiment={name}"])
    if not name.endswith("/base"):  # a shared base may leave keys (???) to the files that use it
        _resolve_all(cfg)
    assert cfg.optimizer.name and cfg.model.name
    if primary == "train_llama":
        assert cfg.trainer.max_steps >= 1 and cfg.data.name
    else:
        assert cfg.task.name in GLUE_SCORE_KEYS


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_preset_composes_at_its_first_and_last_point(name):
    text = (CONFIGS / "sweep" / f"{name}.yaml").read_text()
    primary = _primary(text, name)
    base = [f"+sweep={name}"]
    cfg = _compose(primary, base, hydra_node=True)
    params = {k: str(v).split(",") for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()}
    assert params, f"{name}: no sweeper params"
    for pick in (0, -1):
        point = _compose(primary, base + [f"{k}={v[pick]}" for k, v in params.items()])
        _resolve_all(point)
        assert point.optimizer.name and isinstance(point.run_name, str) and point.run_name


# ----------------------------------------------------------------------------- paths
def _strings(node) -> list:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_paths_have_one_home(monkeypatch):
    """Only configs/paths/default.yaml reads the environment or names a machine folder; every data,
    tokenizer and output path of the configs is built from its keys."""
    for path in CONFIGS.rglob("*.yaml"):
        if path.relative_to(CONFIGS).as_posix() == "paths/default.yaml":
            continue
        values = _strings(yaml.safe_load(path.read_text()))
        assert not [v for v in values if "oc.env:GWT_" in v or "../shared" in v], path
    for primary in ("train_llama", "finetune_glue"):
        raw = yaml.safe_load((CONFIGS / f"{primary}.yaml").read_text())
        assert {"paths": "default"} in raw["defaults"] and raw["output_dir"].startswith("${paths.outputs}/")
    monkeypatch.setenv("GWT_DATA_DIR", "/data/env")
    assert _compose("train_llama", ["data=c4_local"]).data.dir == "/data/env/c4/en"
    lm = _compose("train_llama", ["data=imdb_local", "paths.data=/big/disk"])
    glue = _compose("finetune_glue", ["task=rte", "model=roberta_tiny", "paths.data=/big/disk", "paths.tokenizers=/tok"])
    assert (lm.data.dir, glue.data.dir, glue.model.tokenizer) == ("/big/disk/imdb/en", "/big/disk/glue", "/tok/roberta-base")
    sweep = _compose("train_llama", ["+sweep=table1", "paths.sweeps=/sweeps"], hydra_node=True)
    assert sweep.hydra.sweep.dir == "/sweeps/table1"


# ----------------------------------------------------------------------------- optimizers and methods
@pytest.mark.parametrize("preset, cls", [("gwt", "GWTAdamW"), ("gwt_adafactor", "GWTAdafactor")])
def test_gwt_presets_repeat_the_library_defaults(preset, cls):
    """configs/optimizer/gwt*.yaml state the GWT optimizers' settings for the paper; every one that
    is not a paper choice (lr) is the library's default (gwt.optim.base.GWT_DEFAULTS and the
    optimizer's signature), so the two homes cannot drift."""
    import gwt.optim
    from gwt.optim.base import GWT_DEFAULTS

    raw = yaml.safe_load((CONFIGS / "optimizer" / f"{preset}.yaml").read_text())
    signature = {k: p.default for k, p in inspect.signature(getattr(gwt.optim, cls).__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty}
    if preset == "gwt":
        for key, value in GWT_DEFAULTS.items():
            assert key in raw and raw[key] == value, key
    paper_choices = {"name", "lr", "target_modules"}  # lr: the paper's; target_modules: build_optimizer's
    for key, value in raw.items():
        if key in paper_choices:
            continue
        assert key in signature, f"{preset}.yaml: {key!r} is not an option of {cls}"
        expected = signature[key]
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key


def test_derived_optimizer_presets_inherit():
    """A preset named <base>_<variant> whose optimizer takes every key of <base>.yaml lists <base> in
    its defaults and states only what differs; so does a second preset of the same optimizer."""
    from gwt.optim.registry import optimizer_options

    raw = {n: yaml.safe_load((CONFIGS / "optimizer" / f"{n}.yaml").read_text()) for n in OPTIMIZERS}
    for name, cfg in raw.items():
        bases = [b for b in OPTIMIZERS if b != name and "defaults" not in raw[b] and (
            raw[b]["name"] == cfg["name"]
            or (name.startswith(b + "_") and set(raw[b]) - {"name"} <= set(optimizer_options(cfg["name"]))))]
        for base in bases:
            assert base in cfg.get("defaults", []), f"{name}.yaml copies {base}.yaml: inherit it (defaults: [{base}, _self_])"
            own = {k: v for k, v in cfg.items() if k != "defaults"}
            repeated = {k for k, v in own.items() if k != "name" and raw[base].get(k) == v}
            assert not repeated, f"{name}.yaml repeats {sorted(repeated)} of {base}.yaml"
            composed = _compose("train_llama", [f"optimizer={name}"]).optimizer
            assert OmegaConf.to_container(composed) == {**raw[base], **own}


def test_each_method_file_is_one_paper_row():
    """configs/method/<row>.yaml: one optimizer, the row's own settings, run_name <model>-<row>."""
    for path in sorted((CONFIGS / "method").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert [list(d) for d in raw["defaults"]] == [["override /optimizer"]], path.name
        assert raw["run_name"] == "${model.name}-" + path.stem
        assert set(raw) <= {"defaults", "run_name", "optimizer"}
        cfg = _compose("train_llama", [f"method={path.stem}"])
        assert cfg.optimizer.name == yaml.safe_load((CONFIGS / "optimizer" / f"{raw['defaults'][0]['override /optimizer']}.yaml").read_text())["name"]


# ----------------------------------------------------------------------------- GLUE tasks
def test_glue_task_files_match_the_task_tables():
    from gwt_lab.data.glue import GLUE_TASKS as DATA_TASKS
    from gwt_lab.metrics import SCORE_KEYS
    from gwt_lab.results import GLUE_TASKS as TABLE_TASKS

    files = {p.stem: yaml.safe_load(p.read_text())["task"] for p in (CONFIGS / "task").glob("*.yaml")}
    assert set(files) == set(GLUE_SCORE_KEYS) == set(DATA_TASKS) == set(TABLE_TASKS)
    assert SCORE_KEYS is GLUE_SCORE_KEYS
    for name, task in files.items():
        assert task["name"] == name and task["metric"] == GLUE_SCORE_KEYS[name], name
        assert task["num_labels"] == DATA_TASKS[name].num_labels, name
        assert TABLE_TASKS[name][1][0] == GLUE_SCORE_KEYS[name], name


# ----------------------------------------------------------------------------- shared constants and readers
def test_ignore_index_has_one_home():
    import gwt_lab.data.lm as lm
    import gwt_lab.train.lm_loss as lm_loss

    assert inspect.signature(F.cross_entropy).parameters["ignore_index"].default == IGNORE_INDEX
    assert lm.IGNORE_INDEX == lm_loss.IGNORE_INDEX == IGNORE_INDEX
    defined = [p.relative_to(ROOT).as_posix() for p in (ROOT / "gwt_lab").rglob("*.py")
               if re.search(r"^IGNORE_INDEX\s*=", p.read_text(), re.M)]
    assert defined == ["gwt_lab/constants.py"]


def test_read_jsonl_skips_a_torn_last_line_and_reports_other_damage(tmp_path):
    import gwt_lab.results as results

    assert results.read_jsonl is read_jsonl
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    path.write_text(json.dumps({"step": 1}) + "\n\n" + json.dumps({"step": 2}) + '\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.warns(UserWarning, match="incomplete last line 4"):
        assert read_jsonl(path, warn_torn=True) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)
