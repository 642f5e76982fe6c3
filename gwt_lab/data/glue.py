"""GLUE tasks from the hub (`nyu-mll/glue`) or from a local folder of the original TSV files.

Both sources give the same thing: for each split a `datasets.Dataset` with the columns
`text_a`, `text_b` (sentence-pair tasks only) and `label` (int class ids numbered as on the
hub, or a float score for STS-B). Split names are the hub's: `train`, `validation`, and for
MNLI `validation_matched` / `validation_mismatched`.

The local folder uses the layout written by GLUE's `download_glue_data.py`:

    <dir>/CoLA/{train,dev}.tsv        no header: source, label, original label, sentence
    <dir>/SST-2/{train,dev}.tsv       sentence, label
    <dir>/MRPC/{train,dev}.tsv        Quality, #1 ID, #2 ID, #1 String, #2 String
    <dir>/STS-B/{train,dev}.tsv       ..., sentence1, sentence2, score
    <dir>/QQP/{train,dev}.tsv         id, qid1, qid2, question1, question2, is_duplicate
    <dir>/MNLI/{train,dev_matched,dev_mismatched}.tsv   ..., sentence1, sentence2, ..., gold_label
    <dir>/QNLI/{train,dev}.tsv        index, question, sentence, label (entailment/not_entailment)
    <dir>/RTE/{train,dev}.tsv         index, sentence1, sentence2, label (entailment/not_entailment)
    <dir>/WNLI/{train,dev}.tsv        index, sentence1, sentence2, label
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import datasets

HUB_DATASET = "nyu-mll/glue"
STSB_RANGE = (0.0, 5.0)  # STS-B similarity scores

# Local file name of each hub split.
SPLIT_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


@dataclass(frozen=True)
class GlueTask:
    name: str                       # hub config name, also the `task=` choice
    folder: str                     # folder name in the local GLUE layout
    hub_text: tuple[str, ...]       # hub text column(s)
    num_labels: int                 # 1 = regression (STS-B)
    eval_splits: tuple[str, ...] = ("validation",)
    # Local TSV layout: column names (or indices when the file has no header).
    tsv_text: tuple = ()
    tsv_label: str | int = "label"
    tsv_header: bool = True
    label_names: tuple[str, ...] = field(default=())  # string labels in the TSV, in hub id order

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train",) + self.eval_splits


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", ("sentence",), 2, tsv_text=(3,), tsv_label=1, tsv_header=False),
        GlueTask("sst2", "SST-2", ("sentence",), 2, tsv_text=("sentence",)),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), 2,
                 tsv_text=("#1 String", "#2 String"), tsv_label="Quality"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), 1,
                 tsv_text=("sentence1", "sentence2"), tsv_label="score"),
        GlueTask("qqp", "QQP", ("question1", "question2"), 2,
                 tsv_text=("question1", "question2"), tsv_label="is_duplicate"),
        GlueTask("mnli", "MNLI", ("premise", "hypothesis"), 3,
                 eval_splits=("validation_matched", "validation_mismatched"),
                 tsv_text=("sentence1", "sentence2"), tsv_label="gold_label", label_names=_NLI3),
        GlueTask("qnli", "QNLI", ("question", "sentence"), 2,
                 tsv_text=("question", "sentence"), label_names=_NLI2),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), 2,
                 tsv_text=("sentence1", "sentence2"), label_names=_NLI2),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), 2,
                 tsv_text=("sentence1", "sentence2")),
    ]
}


def get_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r} (task=); choose one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def local_split_path(data_dir: str, task: GlueTask, split: str) -> str:
    if split not in task.splits:
        raise ValueError(f"GLUE task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
    return os.path.join(data_dir, task.folder, SPLIT_FILES[split])


def load_glue(task_name: str, data_dir: str | None = None,
              splits: tuple[str, ...] | None = None) -> dict[str, datasets.Dataset]:
    """Splits of one GLUE task: from `data_dir` (local TSVs) if given, else from the hub.

    Every needed local file is checked before any is read, so a missing one (QNLI train,
    MNLI, QQP in a partial copy) fails at once with its full path.
    """
    task = get_task(task_name)
    splits = tuple(splits or task.splits)
    if data_dir is None:
        return _load_hub(task, splits)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"local GLUE folder not found: {data_dir!r} (data.dir); "
                                f"it must hold {task.folder}/ in the GLUE TSV layout, or set "
                                f"data.dir=null to load {HUB_DATASET} from the hub")
    paths = {s: local_split_path(data_dir, task, s) for s in splits}
    for split, path in paths.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"GLUE task {task.name!r}: file {path} is missing (split {split!r}, from data.dir="
                f"{data_dir!r}); the local layout needs {task.folder}/"
                f"{{{','.join(SPLIT_FILES[s][:-4] for s in task.splits)}}}.tsv, or set "
                f"data.dir=null to load {HUB_DATASET} from the hub")
    return {s: datasets.Dataset.from_dict(read_glue_tsv(p, task)) for s, p in paths.items()}


def _load_hub(task: GlueTask, splits: tuple[str, ...]) -> dict[str, datasets.Dataset]:
    out = {}
    for split in splits:
        if split not in task.splits:
            raise ValueError(f"GLUE task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
        ds = datasets.load_dataset(HUB_DATASET, task.name, split=split)
        renames = dict(zip(task.hub_text, ("text_a", "text_b")))
        ds = ds.rename_columns(renames)
        out[split] = ds.remove_columns([c for c in ds.column_names if c not in (*renames.values(), "label")])
    return out


def read_glue_tsv(path: str, task: GlueTask) -> dict[str, list]:
    """Columns `text_a`, [`text_b`], `label` of one GLUE TSV file.

    Fields are split on tabs with no quote handling (the GLUE files contain bare quotes);
    a row with a missing field or an unknown label raises ValueError naming file and line.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC starts with a BOM
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.tsv_header:
        if not rows:
            raise ValueError(f"{path}: empty file, expected a header row")
        header, rows, first_line = rows[0], rows[1:], 2
        missing = [c for c in (*task.tsv_text, task.tsv_label) if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing} needed for task "
                             f"{task.name!r}; header is {header}")
        text_idx = [header.index(c) for c in task.tsv_text]
        label_idx = header.index(task.tsv_label)
    else:
        text_idx, label_idx, first_line = list(task.tsv_text), task.tsv_label, 1
    width = max(text_idx + [label_idx]) + 1
    columns = {name: [] for name in ("text_a", "text_b")[: len(text_idx)]}
    labels = []
    for line_no, row in enumerate(rows, start=first_line):
        if len(row) < width:
            raise ValueError(f"{path}:{line_no}: expected at least {width} tab-separated "
                             f"fields, got {len(row)}")
        for name, i in zip(columns, text_idx):
            columns[name].append(row[i])
        labels.append(_parse_label(row[label_idx], task, f"{path}:{line_no}"))
    if not labels:
        raise ValueError(f"{path}: no examples")
    return {**columns, "label": labels}


def _parse_label(text: str, task: GlueTask, where: str):
    text = text.strip()
    if task.is_regression:
        try:
            score = float(text)
        except ValueError:
            score = float("nan")
        if not STSB_RANGE[0] <= score <= STSB_RANGE[1]:  # also refuses nan and inf
            raise ValueError(f"{where}: bad score {text!r} for task {task.name!r}; expected a number in "
                             f"[{STSB_RANGE[0]:g}, {STSB_RANGE[1]:g}]")
        return score
    try:
        if task.label_names:
            return task.label_names.index(text)
        label = int(text)
    except ValueError:
        label = None
    if label is None or not 0 <= label < task.num_labels:
        valid = list(task.label_names) or list(range(task.num_labels))
        raise ValueError(f"{where}: bad label {text!r} for task {task.name!r}; expected {valid}")
    return label


def tokenize_glue(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """`input_ids`, `attention_mask` (and `token_type_ids` for BERT) plus `labels`, truncated
    to `max_length` tokens and left unpadded (batches are padded to their longest row)."""
    pair = "text_b" in ds.column_names

    def encode(batch):
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


def collate_glue(rows: list[dict], pad_token_id: int) -> dict:
    """Pad tokenized rows to the longest one: `input_ids` with `pad_token_id`, masks and token
    types with 0; `labels` as int64 (classes) or float32 (STS-B scores)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    batch = {}
    for key, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in rows[0]:
            batch[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long)
    labels = [r["labels"] for r in rows]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return batch
