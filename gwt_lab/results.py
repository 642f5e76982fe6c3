"""Run results and the paper's numbers, side by side.

A finished run directory holds `result.json` (`"config"` resolved, `"git_commit"`,
`"metrics"`; see DESIGN.md) and `metrics.jsonl` (one JSON object per logged step; evaluation
lines carry `eval_loss` / `eval_ppl`). `load_runs` reads every `result.json` under a folder
into `Run` records that know their model size, method label, data, scale and machine;
`load_paper` reads the CSV transcriptions in `results/paper/`; `Table` renders Markdown or
LaTeX. The table builders themselves live in `scripts/make_tables.py`.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from gwt_lab.constants import GLUE_SCORE_KEYS
from gwt_lab.jsonl import read_jsonl

PAPER_DIR = "paper"  # results/paper holds the paper's CSVs, never runs

# Model config name -> column label of the paper's tables.
LLAMA_SIZES = {
    "llama_tiny": "tiny",
    "llama_20m": "20M",
    "llama_60m": "60M",
    "llama_130m": "130M",
    "llama_350m": "350M",
    "llama_1b": "1B",
    "llama_7b": "7B",
}
PAPER_LLAMA = ("llama_60m", "llama_130m", "llama_350m", "llama_1b")
# Hidden size -> model name, for results whose config lacks a model name (Table A1 sizes).
_HIDDEN_TO_LLAMA = {512: "llama_60m", 768: "llama_130m", 1024: "llama_350m", 2048: "llama_1b", 4096: "llama_7b"}

# GLUE task key -> (paper column, metric names tried in order, paper's metric in words). The first
# name is the paper's metric (gwt_lab.constants.GLUE_SCORE_KEYS); the others are other spellings.
_S = GLUE_SCORE_KEYS
GLUE_TASKS = {
    "cola": ("CoLA", (_S["cola"], "mcc", "matthews"), "Matthews corr."),
    "stsb": ("STS-B", (_S["stsb"], "pearsonr", "pearson_r"), "Pearson"),
    "mrpc": ("MRPC", (_S["mrpc"],), "F1"),
    "rte": ("RTE", (_S["rte"], "acc"), "accuracy"),
    "sst2": ("SST-2", (_S["sst2"], "acc"), "accuracy"),
    "mnli": ("MNLI", (_S["mnli"], "matched_accuracy", "accuracy", "acc"), "matched accuracy"),
    "qnli": ("QNLI", (_S["qnli"], "acc"), "accuracy"),
    "qqp": ("QQP", (_S["qqp"], "acc"), "accuracy"),
    "wnli": ("WNLI", (_S["wnli"], "acc"), "accuracy"),
}
GLUE_PAPER_EPOCHS = 30
GLUE_PAPER_MODEL = "roberta_base"


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    """d[k1][k2]... or default when any level is missing."""
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def parse_count(text: str) -> float:
    """'1.3B' -> 1.3e9, '131K' -> 1.31e5, '60M' -> 6e7; a plain number passes through."""
    text = str(text).strip()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    if text and text[-1].upper() in scale:
        return float(text[:-1]) * scale[text[-1].upper()]
    return float(text)


def human_count(value: float | None) -> str:
    """1.64e6 -> '1.64M' (tokens, parameters)."""
    if value is None:
        return "?"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


# ----------------------------------------------------------------------------- labels
def method_label(optimizer: dict, hidden_size: int | None = None) -> str:
    """The paper's row name for an optimizer config: Full-Rank, Haar-2, DB2-3, GaLore-1/4, ..."""
    name = str(optimizer.get("name", "?"))
    if name == "adamw":
        return "Full-Rank"
    if name in ("gwt", "gwt_adafactor", "gwt_wrap"):
        wavelet = str(optimizer.get("wavelet", "haar"))
        wavelet = "Haar" if wavelet == "haar" else wavelet.upper()
        label = f"{wavelet}-{optimizer.get('level', 2)}"
        if name == "gwt_adafactor":
            return f"{label} Adafactor"
        if name == "gwt_wrap":
            return f"{label} ({optimizer.get('base', optimizer.get('inner', 'wrapped'))})"
        return label
    if name == "galore":
        return f"GaLore-{_rank_fraction(optimizer.get('rank'), hidden_size)}"
    known = {"apollo": "APOLLO", "fira": "Fira", "adafactor": "Adafactor"}
    return known.get(name, name)


def _rank_fraction(rank: Any, hidden_size: int | None) -> str:
    """GaLore rank as the paper writes it: 1/4 of the hidden size, or the raw rank."""
    if rank is None:
        return "?"
    rank = float(rank)
    if 0 < rank < 1:
        inverse = 1 / rank
    elif hidden_size:
        inverse = hidden_size / rank
    else:
        return f"r{int(rank)}"
    if abs(inverse - round(inverse)) < 1e-6:
        return f"1/{round(inverse)}"
    return f"r{rank:g}"


def model_name(config: dict) -> str:
    """The model config's name (llama_60m, roberta_base, ...), inferred from sizes if absent."""
    model = config.get("model")
    if isinstance(model, str):
        return model
    if isinstance(model, dict):
        for key in ("name", "_name", "model_name"):
            if isinstance(model.get(key), str):
                return model[key]
        hidden = model.get("hidden_size")
        if hidden in _HIDDEN_TO_LLAMA and "llama" in str(model.get("model_type", "llama")):
            return _HIDDEN_TO_LLAMA[hidden]
    return "unknown"


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One finished run, as read from its result.json."""

    path: Path  # run directory, relative to the results root
    config: dict
    metrics: dict
    git_commit: str
    extra: dict = field(default_factory=dict)  # every other top-level key of result.json
    root: Path = Path(".")

    @property
    def kind(self) -> str:
        return "glue" if self.task else "pretrain"

    @property
    def task(self) -> str | None:
        task = self.config.get("task")
        if isinstance(task, dict):
            task = task.get("name")
        return str(task).lower() if task else None

    @property
    def model(self) -> str:
        return model_name(self.config)

    @property
    def size(self) -> str:
        return LLAMA_SIZES.get(self.model, self.model)

    @property
    def optimizer(self) -> dict:
        return self.config.get("optimizer") or {}

    @property
    def method(self) -> str:
        return method_label(self.optimizer, _get(self.config, "model", "hidden_size"))

    @property
    def lr(self) -> float | None:
        lr = self.optimizer.get("lr")
        return float(lr) if lr is not None else None

    @property
    def alpha(self) -> float | None:
        alpha = self.optimizer.get("alpha")
        return float(alpha) if alpha is not None else None

    @property
    def data(self) -> str:
        data = self.config.get("data")
        if isinstance(data, dict):
            return str(data.get("name") or data.get("path") or data.get("dir") or "?")
        return str(data or "?")

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def steps(self) -> int | None:
        for key in ("steps", "global_step", "step"):
            if isinstance(self.metrics.get(key), (int, float)):
                return int(self.metrics[key])
        max_steps = _get(self.config, "trainer", "max_steps")
        return int(max_steps) if isinstance(max_steps, (int, float)) else None

    @property
    def epochs(self) -> float | None:
        for value in (self.metrics.get("epochs"), _get(self.config, "trainer", "epochs"),
                      _get(self.config, "trainer", "num_epochs"), _get(self.config, "trainer", "max_epochs")):
            if isinstance(value, (int, float)):
                return value
        return None

    @property
    def tokens(self) -> float | None:
        value = self.metrics.get("tokens_seen")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def machine(self) -> str:
        """Where the run ran, from whichever field the entrypoint recorded (result.json `machine`)."""
        for key in ("machine", "device", "hardware", "hostname"):
            value = self.extra.get(key) if key in self.extra else self.metrics.get(key)
            if isinstance(value, dict):
                return _describe_machine(value, self.extra.get("world_size") or self.metrics.get("world_size"))
            if value:
                return str(value)
        return "unknown machine"

    def metric(self, *names: str) -> float | None:
        """First of `names` found in the final metrics (also under metrics['final'])."""
        for source in (self.metrics, self.metrics.get("final") if isinstance(self.metrics.get("final"), dict) else {}):
            for name in names:
                for key in (name, f"eval_{name}"):
                    value = source.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        return float(value)
        return None

    def glue_score(self) -> float | None:
        """The paper's metric for this GLUE task, in percent.

        finetune_glue.py writes percentages and marks them with a `score` key (the task's metric);
        results without that key whose value lies in [-1, 1] are read as fractions."""
        if self.task not in GLUE_TASKS:
            return None
        task_metric = _get(self.config, "task", "metric")
        names = GLUE_TASKS[self.task][1] + ((task_metric,) if isinstance(task_metric, str) else ()) + ("score",)
        value = self.metric(*names)
        if value is None:
            return None
        in_percent = self.metric("score") is not None
        return value if in_percent or abs(value) > 1.0 else value * 100

    def curve(self) -> list[dict]:
        """The parsed metrics.jsonl (empty when the run has none)."""
        return read_jsonl(self.root / self.path / "metrics.jsonl")

    def describe(self, paper_tokens: float | None = None) -> str:
        """One provenance line: which run, what scale, which machine."""
        parts = [f"`{self.path.as_posix()}`", self.model]
        if self.kind == "glue":
            parts.append(f"task {self.task}")
            if self.epochs is not None:
                parts.append(f"{self.epochs:g} epochs (paper {GLUE_PAPER_EPOCHS})")
            if self.steps is not None:
                parts.append(f"{self.steps} steps")
        else:
            parts.append(f"data {self.data}")
            if self.steps is not None:
                parts.append(f"{self.steps} steps")
            share = ""
            if paper_tokens and self.tokens:
                pct = 100 * self.tokens / paper_tokens
                share = f" = {pct:.0f}%" if pct >= 10 else f" = {pct:.2g}%"
                share += f" of the paper's {human_count(paper_tokens)}"
            parts.append(f"{human_count(self.tokens)} tokens{share}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:g}")
        if self.alpha is not None:
            parts.append(f"alpha {self.alpha:g}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        parts.append(self.machine)
        parts.append(f"commit {str(self.git_commit)[:8]}")
        return ", ".join(parts)


def _describe_machine(info: dict, world_size=None) -> str:
    """'1x NVIDIA H100 (torch 2.4)' / 'CPU x86_64, 2 cores (torch 2.13.0)' from a machine dict."""
    torch_version = f" (torch {info['torch']})" if info.get("torch") else ""
    if info.get("gpu"):
        count = world_size or info.get("gpu_count") or 1
        return f"{count}x {info['gpu']}{torch_version}"
    if info.get("cpu") or info.get("cpu_count"):
        procs = f", {world_size} processes" if world_size and world_size > 1 else ""
        return f"CPU {info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores{procs}{torch_version}"
    return ", ".join(f"{k}={v}" for k, v in info.items())


def is_study_run(run: Run) -> bool:
    """A run of a tuning study (config key ``study``, e.g. results/reduced_table1): summarised by its
    own script, kept out of the paper's tables and figures."""
    return isinstance(run.config.get("study"), dict)


def load_runs(root: str | Path = "results") -> list[Run]:
    """Every result.json below `root` (the paper's folder excluded), sorted by path."""
    root = Path(root)
    runs = []
    for result_path in sorted(root.rglob("result.json")):
        rel = result_path.parent.relative_to(root)
        if rel.parts and rel.parts[0] == PAPER_DIR:
            continue
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{result_path}: not valid JSON ({err})") from err
        if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
            raise ValueError(f"{result_path}: expected an object with a 'metrics' object (DESIGN.md result.json contract)")
        extra = {k: v for k, v in result.items() if k not in ("config", "metrics", "git_commit")}
        runs.append(Run(path=rel, config=result.get("config") or {}, metrics=result["metrics"],
                        git_commit=str(result.get("git_commit", "unknown")), extra=extra, root=root))
    return runs


def load_paper(paper_dir: str | Path) -> dict[str, list[dict]]:
    """{csv stem: rows as dicts of strings} for every CSV in the paper folder."""
    paper_dir = Path(paper_dir)
    tables = {}
    for path in sorted(paper_dir.glob("*.csv")):
        with path.open(newline="") as f:
            tables[path.stem] = list(csv.DictReader(f))
    if not tables:
        raise FileNotFoundError(f"no paper CSVs in {paper_dir} (expected results/paper/*.csv)")
    return tables


def paper_value(rows: list[dict], key_column: str, key: str, column: str) -> float | None:
    """The number in `column` of the row whose `key_column` equals `key` (None if blank/absent)."""
    for row in rows:
        if row.get(key_column) == key:
            text = (row.get(column) or "").strip()
            return float(text) if text else None
    return None


# ----------------------------------------------------------------------------- like with like
# Config keys that never make two runs different experiments: the seed (what a mean ± std is taken
# over), where a run writes and logs, machine-local paths (``paths.*``, ``data.dir``), bookkeeping of the sweep that produced it,
# and optimizer keys that pick an implementation of the same update (kernels, fused loops).
SEED_KEY = "seed"
IGNORED_CONFIG_KEYS = ("output_dir", "run_name", "resume", "logger", "wandb", "paths", "data.dir", "study.lr_point",
                       "study.lr_grid", "optimizer.backend", "optimizer.closed_form", "optimizer.compile",
                       "optimizer.fused", "optimizer.foreach")


#: Config keys added after runs were made, with the value those earlier runs had in effect: a run
#: whose config lacks the key counts as having that value (so adding a key does not split a cell).
LATER_KEYS = {"distributed.name": "ddp", "trainer.activation_checkpointing": False}


def _with_later_keys(flat: dict[str, Any]) -> dict[str, Any]:
    out = dict(flat)
    for key, value in LATER_KEYS.items():
        if out.get(key) is None:
            out[key] = value
    return out


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'trainer.max_steps': 500, ...}: nested dicts as dotted keys (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignore)


def protocol(config: dict, ignore: Iterable[str] = ()) -> str:
    """A canonical string of everything in ``config`` that makes an experiment: the config without
    the seed, :data:`IGNORED_CONFIG_KEYS` and ``ignore``. Runs with equal protocols differ in the seed alone."""
    skip = (SEED_KEY, *IGNORED_CONFIG_KEYS, *ignore)
    flat = {k: v for k, v in _with_later_keys(flatten_config(config)).items() if not _ignored(k, skip)}
    return json.dumps(flat, sort_keys=True, default=str)


def config_differences(a: dict, b: dict, ignore: Iterable[str] = ()) -> list[str]:
    """'key=value_in_a (vs value_in_b)' for every protocol key where configs ``a`` and ``b`` differ."""
    skip = (SEED_KEY, *IGNORED_CONFIG_KEYS, *ignore)
    fa, fb = _with_later_keys(flatten_config(a)), _with_later_keys(flatten_config(b))
    out = []
    for key in sorted(set(fa) | set(fb)):
        if _ignored(key, skip) or fa.get(key) == fb.get(key):
            continue
        out.append(f"{key}={json.dumps(fa.get(key), default=str)} (vs {json.dumps(fb.get(key), default=str)})")
    return out


def _finished_at(run: Run) -> float:
    """result.json's ``finished_at`` as a POSIX time (0 when absent or unreadable)."""
    import datetime as _dt

    try:
        return _dt.datetime.fromisoformat(str(run.extra.get("finished_at"))).timestamp()
    except ValueError:
        return 0.0


def group_like(runs: Iterable[Run], ignore: Iterable[str] = ()) -> list[list[Run]]:
    """``runs`` split into groups whose configs differ in the seed alone (and ``ignore``), the
    preferred group first: the most seeds of one exact setting, then the longest training (steps,
    tokens), then the most recently finished, then the most runs, then path."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(protocol(run.config, ignore), []).append(run)

    def rank(group: list[Run]):
        seeds = max(Counter(protocol(r.config) for r in group).values())
        steps = max((r.steps or 0) for r in group)
        tokens = max((r.tokens or 0) for r in group)
        newest = max(_finished_at(r) for r in group)
        return (-seeds, -steps, -tokens, -newest, -len(group), min(r.path.as_posix() for r in group))
    return sorted(groups.values(), key=rank)


# ----------------------------------------------------------------------------- cells and tables
def mean_cell(values: Iterable[float | None], digits: int = 2) -> tuple[str, int]:
    """'12.34' for one value, '12.34±0.05' (mean ± sample std) for several; count of values."""
    values = [v for v in values if v is not None]
    if not values:
        return "—", 0
    text = f"{statistics.fmean(values):.{digits}f}"
    if len(values) > 1:
        text += f"±{statistics.stdev(values):.{digits}f}"
    return text, len(values)


def ours_paper(ours: str, paper: float | str | None, digits: int = 2, suffix: str = "") -> str:
    """The cell format of every table: 'ours (paper)', '—' for whichever is missing."""
    if isinstance(paper, (int, float)):
        paper = f"{paper:.{digits}f}{suffix}"
    return f"{ours} ({paper if paper not in (None, '') else '—'})"


@dataclass
class Table:
    """A rendered paper table: header, rows of cells, and notes (run provenance)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.header) - 1)
        lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(self.title)}}}",
                 f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(_tex(h) for h in self.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(c) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.notes:
            lines += ["\\par\\smallskip\\footnotesize", "\\begin{itemize}"]
            lines += [f"\\item {_tex(note)}" for note in self.notes]
            lines += ["\\end{itemize}"]
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "—": "---", "±": r"$\pm$", "†": r"$^\dagger$", "`": ""}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
