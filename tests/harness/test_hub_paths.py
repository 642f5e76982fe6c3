"""The hub code paths (``data.source=hub`` for C4, ``data.dir=null`` for GLUE) run against local
folders laid out like the hub dataset repositories ``allenai/c4`` and ``nyu-mll/glue``.

``datasets.load_dataset(<folder>, <config>, split=...)`` resolves a folder exactly as it resolves a
hub repository: data files plus a README whose YAML header declares the configs, their data files
per split and the features. So the loaders make the same call with the same config and split names
as for the real repositories; only the repository id is replaced by the folder.
"""
import gzip
import json
import os
from pathlib import Path

import datasets
import pytest
import yaml

from gwt_lab.data import glue as glue_mod
from gwt_lab.data.glue import GLUE_TASKS, load_glue, read_glue_tsv, local_split_path
from gwt_lab.data.lm import TextSource, open_documents
from tests.helpers import compose_cfg, reset_accelerate

DATA = Path(os.environ.get("GWT_DATA_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
C4_LOCAL = DATA / "c4" / "en"
GLUE_LOCAL = DATA / "glue"


def _readme(configs: list, dataset_info: list) -> str:
    return "---\n" + yaml.safe_dump({"configs": configs, "dataset_info": dataset_info}, sort_keys=False) + "---\n"


# ------------------------------------------------------------------------------------------- C4
# As declared by allenai/c4: the timestamp stays a string (pyarrow would otherwise infer timestamp[s]
# from the first rows and fail on a row with an empty one, as in the local validation sample).
C4_FEATURES = [{"name": "text", "dtype": "string"}, {"name": "timestamp", "dtype": "string"},
               {"name": "url", "dtype": "string"}]


def _c4_docs(split: str) -> list[dict]:
    with gzip.open(C4_LOCAL / f"c4-{split}.00000-of-00001.json.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def c4_repo(tmp_path_factory):
    """allenai/c4's layout: ``en/c4-{train,validation}.NNNNN-of-MMMMM.json.gz`` and a README whose
    header declares config ``en`` and its features, as on the hub."""
    if not C4_LOCAL.is_dir():
        pytest.skip(f"local C4 sample not found at {C4_LOCAL} (set GWT_DATA_DIR)")
    repo = tmp_path_factory.mktemp("allenai_c4")
    (repo / "en").mkdir()
    for split, shards in (("train", 4), ("validation", 2)):
        docs = _c4_docs(split)
        for i in range(shards):  # several shards, so shuffling and the rank split work on shards
            with gzip.open(repo / "en" / f"c4-{split}.{i:05d}-of-{shards:05d}.json.gz", "wt", encoding="utf-8") as f:
                for doc in docs[i::shards]:
                    f.write(json.dumps(doc) + "\n")
    configs = [{"config_name": "en", "data_files": [
        {"split": "train", "path": "en/c4-train.*.json.gz"},
        {"split": "validation", "path": "en/c4-validation.*.json.gz"}]}]
    (repo / "README.md").write_text(_readme(configs, [{"config_name": "en", "features": C4_FEATURES}]) + "\nC4 sample\n")
    return repo


def _texts(ds) -> list[str]:
    return [d["text"] for d in ds]


def test_c4_hub_call_streams_config_en_with_declared_features(c4_repo):
    src = TextSource(source="hub", path=str(c4_repo), config_name="en")
    ds = open_documents(src, "validation", shuffle_seed=None, shuffle_buffer=10)
    assert isinstance(ds, datasets.IterableDataset)
    first = next(iter(ds))
    assert set(first) == {"text", "timestamp", "url"}
    assert ds.features["timestamp"].dtype == "string"
    assert sorted(_texts(ds)) == sorted(d["text"] for d in _c4_docs("validation"))


def test_c4_hub_shuffle_and_rank_split(c4_repo):
    src = TextSource(source="hub", path=str(c4_repo), config_name="en")
    everything = sorted(d["text"] for d in _c4_docs("train"))
    plain = _texts(open_documents(src, "train", None, 100))
    shuffled = _texts(open_documents(src, "train", 42, 100))
    again = _texts(open_documents(src, "train", 42, 100))
    assert sorted(shuffled) == everything and shuffled == again and shuffled != plain
    ranks = [_texts(open_documents(src, "train", 42, 100, rank=r, world_size=2)) for r in range(2)]
    # every document exactly once over the two ranks (the sample holds a few duplicate texts,
    # so this compares multisets), each rank a non-empty part of the shuffled stream
    assert all(ranks) and sorted(ranks[0] + ranks[1]) == everything
    assert ranks[0] != shuffled[:len(ranks[0])] or ranks[1] != shuffled[:len(ranks[1])]


def test_c4_hub_unknown_config_names_the_choices(c4_repo):
    src = TextSource(source="hub", path=str(c4_repo), config_name="en.noblocklist")
    with pytest.raises(ValueError, match="en.noblocklist"):
        next(iter(open_documents(src, "train", None, 10)))


def test_train_llama_with_data_source_hub(c4_repo, tmp_path):
    import train_llama
    from gwt_lab.train import read_metrics, read_result

    reset_accelerate()
    try:
        cfg = compose_cfg(["data=c4", f"data.path={c4_repo}", "data.shuffle_buffer=50", f"output_dir={tmp_path / 'run'}"])
        assert cfg.data.source == "hub" and cfg.data.config_name == "en"
        train_llama.train(cfg)
    finally:
        reset_accelerate()
    result = read_result(tmp_path / "run")
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4] and result["metrics"]["eval_tokens"] > 0
    assert result["config"]["data"]["path"] == str(c4_repo)


# ----------------------------------------------------------------------------------------- GLUE
LABEL_NAMES = {"cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
               "mrpc": ["not_equivalent", "equivalent"], "qnli": ["entailment", "not_entailment"],
               "rte": ["entailment", "not_entailment"], "wnli": ["not_entailment", "entailment"]}
ROWS = 40  # rows per split copied into the hub-layout folder


def _local_tasks() -> list[str]:
    return [name for name, task in GLUE_TASKS.items()
            if all(os.path.isfile(local_split_path(str(GLUE_LOCAL), task, s)) for s in task.splits)]


@pytest.fixture(scope="module")
def glue_repo(tmp_path_factory):
    """nyu-mll/glue's layout: ``<config>/<split>-00000-of-00001.parquet`` per task, hub column names,
    an ``idx`` column, ClassLabel labels (float32 for STS-B), a test split labelled -1, and a README
    declaring every config."""
    tasks = _local_tasks()
    if not tasks:
        pytest.skip(f"no complete local GLUE task under {GLUE_LOCAL} (set GWT_DATA_DIR)")
    repo = tmp_path_factory.mktemp("nyu-mll_glue")
    configs, infos = [], []
    for name in tasks:
        task = GLUE_TASKS[name]
        label = {"name": "label", "dtype": "float32"} if task.is_regression else \
            {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(LABEL_NAMES[name])}}}}
        feats = [{"name": c, "dtype": "string"} for c in task.hub_text] + [label, {"name": "idx", "dtype": "int32"}]
        features = datasets.Features({f["name"]: _feature(f["dtype"]) for f in feats})
        (repo / name).mkdir()
        files = []
        for split in (*task.splits, "test"):
            src = read_glue_tsv(local_split_path(str(GLUE_LOCAL), task, "validation" if split == "test" else split), task)
            n = min(ROWS, len(src["label"]))
            cols = {hub: src[loc][:n] for hub, loc in zip(task.hub_text, ("text_a", "text_b"))}
            cols["label"] = [-1] * n if split == "test" and not task.is_regression else \
                ([-1.0] * n if split == "test" else src["label"][:n])
            cols["idx"] = list(range(n))
            datasets.Dataset.from_dict(cols, features=features).to_parquet(
                str(repo / name / f"{split}-00000-of-00001.parquet"))
            files.append({"split": split, "path": f"{name}/{split}-*"})
        configs.append({"config_name": name, "data_files": files})
        infos.append({"config_name": name, "features": feats})
    (repo / "README.md").write_text(_readme(configs, infos) + "\nGLUE sample\n")
    return repo, tasks


def _feature(dtype):
    if isinstance(dtype, dict):
        return datasets.ClassLabel(names=list(dtype["class_label"]["names"].values()))
    return datasets.Value(dtype)


@pytest.fixture
def hub_glue(glue_repo, monkeypatch):
    repo, tasks = glue_repo
    monkeypatch.setattr(glue_mod, "HUB_DATASET", str(repo))
    return tasks


def test_glue_hub_path_equals_local_tsv(hub_glue):
    assert {"cola", "sst2", "mrpc", "stsb", "rte", "wnli"} <= set(hub_glue)
    for name in hub_glue:
        hub = load_glue(name, data_dir=None)
        local = load_glue(name, data_dir=str(GLUE_LOCAL))
        assert set(hub) == set(local) == set(GLUE_TASKS[name].splits)
        for split, ds in hub.items():
            assert ds.column_names == local[split].column_names, (name, split)
            n = len(ds)
            assert n == min(ROWS, len(local[split]))
            got, want = ds.to_dict(), local[split].select(range(n)).to_dict()
            if GLUE_TASKS[name].is_regression:  # the hub stores STS-B scores as float32
                assert got.pop("label") == pytest.approx(want.pop("label"), rel=1e-6)
            assert got == want, (name, split)


def test_glue_hub_unknown_split_is_refused(hub_glue):
    with pytest.raises(ValueError, match=r"has no split 'validation_matched'"):
        load_glue("cola", data_dir=None, splits=("validation_matched",))


def test_finetune_glue_with_data_dir_null(hub_glue, tmp_path):
    """finetune_glue's data step with data.dir=null reads the hub-layout folder."""
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONFIGS

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("finetune_glue", overrides=["task=rte", "data.dir=null"])
    assert cfg.data.dir is None
    splits = load_glue(cfg.task.name, cfg.data.dir)
    assert len(splits["train"]) == ROWS and splits["validation"].features["label"].num_classes == 2
