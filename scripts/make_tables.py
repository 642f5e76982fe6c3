"""Tables 1, 2, 3, 4, A3 and A4 of the paper from this repository's runs, beside the paper's numbers,
and Table 1 at reduced scale with every method tuned (1R, from results/reduced_table1).

Usage:
    python scripts/make_tables.py                           # Markdown to stdout
    python scripts/make_tables.py --latex
    python scripts/make_tables.py --out results/tables.md   # what results/tables.md is made with
    python scripts/make_tables.py --results DIR --tables 1 3

Every `result.json` under `--results` (default `results/`, the paper's folder excluded) is read
(contract in DESIGN.md). Each cell reads "ours (paper)"; "—" where no run (or no paper value)
exists; a run count is added when several runs (seeds) feed a cell (mean ± std over runs whose
resolved configs differ in the seed alone; runs under other settings are named in the notes and
marked ‡, never averaged in). A cell marked
† comes from runs that differ from the paper's setting (fewer tokens or epochs, other data or
model): the notes under each table list every run behind every cell with its model, data,
steps, tokens (and share of the paper's budget), learning rate, seed, machine and commit.
Memory columns are estimates from model shapes (`scripts/estimate_memory.py`), as in the paper.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from estimate_memory import METHODS, TABLE4_MODELS, Estimator, estimate, llama_shapes, table_a4  # noqa: E402
from gwt_lab.results import (  # noqa: E402
    GLUE_PAPER_EPOCHS, GLUE_PAPER_MODEL, GLUE_TASKS, LLAMA_SIZES, PAPER_LLAMA, Run, Table, config_differences,
    group_like, human_count, is_study_run, load_paper, load_runs, mean_cell, ours_paper, paper_value, parse_count,
)

TABLES = ("1", "1R", "2", "3", "4", "A3", "A4")
PAPER_ALPHA = 0.25  # alpha of every GWT row of Tables 1, 2, 4 (Table A2)
DAGGER = "†"
OTHER = "‡"


# ----------------------------------------------------------------------------- selection helpers
def paper_tokens(paper: dict) -> dict[str, float]:
    """Model name -> the paper's pre-training token budget (Table A1)."""
    return {row["model"]: parse_count(row["tokens"]) for row in paper["tableA1_A2_protocol"] if row.get("tokens")}


def is_paper_scale(run: Run, budgets: dict[str, float]) -> bool:
    """Whether a run matches the paper's setting closely enough to be read as a full one."""
    if run.kind == "glue":
        return run.model == GLUE_PAPER_MODEL and (run.epochs or 0) >= GLUE_PAPER_EPOCHS
    budget = budgets.get(run.model)
    return bool(budget and run.tokens and run.tokens >= 0.9 * budget and run.data.startswith("c4"))


def pretrain_runs(runs: list[Run]) -> list[Run]:
    """Pre-training runs at the paper's GWT setting: alpha 0.25 and, for GWT-AdamW, the limiter on
    (the Figure 3 alpha and Figure 5 limiter ablations are left out)."""
    def ablation(run: Run) -> bool:
        name = run.optimizer.get("name")
        if name in ("gwt", "gwt_adafactor") and run.alpha not in (None, PAPER_ALPHA):
            return True
        return name == "gwt" and run.optimizer.get("limiter", 1.01) in (None, 0, False)

    return [r for r in runs if r.kind == "pretrain" and not ablation(r) and not is_study_run(r)]


USED: set[str] = set()  # paths of the runs that fed any cell (for the "not in any table" list)


class Cells:
    """Collects which runs fed which cell, for the notes under a table."""

    def __init__(self, budgets: dict[str, float]):
        self.budgets = budgets
        self.notes: list[str] = []
        self.reduced = False
        self.other = False

    def cell(self, label: str, runs: list[Run], values: list[float | None], paper: float | None,
             digits: int = 2, suffix: str = "", prefer: list[Run] | None = None) -> str:
        """'mean±std (n=k)' over the runs whose configs differ in the seed alone (``gwt_lab.results.group_like``):
        the group holding ``prefer[0]`` if given, else the one with the most runs. Runs under other
        settings are not averaged in: the cell gets ‡ and the notes name their values and differences."""
        value_of = {id(r): v for r, v in zip(runs, values)}
        groups = group_like([r for r in runs if value_of[id(r)] is not None])
        if prefer:
            groups.sort(key=lambda g: not any(r is prefer[0] for r in g))
        main = groups[0] if groups else []
        ours, count = mean_cell([value_of[id(r)] for r in main], digits)
        if count:
            if count > 1:
                ours += f" (n={count})"
            if not all(is_paper_scale(r, self.budgets) for r in main):
                ours += DAGGER
                self.reduced = True
            for run in main:
                self.notes.append(f"{label}: {run.describe(self.budgets.get(run.model))}")
                USED.add(str(run.root / run.path))
            for other in groups[1:]:
                text, n = mean_cell([value_of[id(r)] for r in other], digits)
                diff = "; ".join(config_differences(other[0].config, main[0].config)) or "nothing but the seed"
                paths = ", ".join(f"`{r.path.as_posix()}`" for r in other)
                self.notes.append(f"{label}: {OTHER} not averaged in: {text} (n={n}) from {paths}, whose configs "
                                  f"differ from the cell's in {diff}")
                self.other = True
                USED.update(str(r.root / r.path) for r in other)
            if len(groups) > 1:
                ours += OTHER
            ours += suffix if suffix and ours != "—" else ""
        return ours_paper(ours, paper, digits, suffix)

    def finish(self, extra: list[str]) -> list[str]:
        legend = [f"{DAGGER} = run(s) below the paper's scale or setting (tokens, epochs, data or model): "
                  "not comparable with the paper's number."] if self.reduced else []
        if self.other:
            legend.append(f"{OTHER} = the cell averages only runs whose resolved configs differ in the seed alone; "
                          "runs under other settings are listed below with their values, not averaged in.")
        runs = ["Runs behind the cells:"] + self.notes if self.notes else ["No runs yet: every 'ours' is —."]
        return extra + legend + runs


def _sizes(runs: list[Run], base: tuple[str, ...]) -> list[str]:
    """The paper's sizes, then any other size that has runs (tiny, 20M, ...)."""
    extra = sorted({r.model for r in runs if r.model not in base}, key=lambda m: (m not in LLAMA_SIZES, m))
    return list(base) + extra


# ----------------------------------------------------------------------------- Table 1
def table1(runs: list[Run], paper: dict, est: Estimator) -> Table:
    rows_csv = paper["table1_c4_pretrain"]
    runs = pretrain_runs(runs)
    models = _sizes(runs, PAPER_LLAMA)
    cells = Cells(paper_tokens(paper))
    methods = [row["method"] for row in rows_csv]
    methods += sorted({r.method for r in runs} - set(methods))
    header = ["Method"]
    for model in models:
        size = LLAMA_SIZES.get(model, model)
        header += [f"{size} ppl"] + ([f"{size} mem"] if model in PAPER_LLAMA else [])
    rows = []
    for method in methods:
        row = [method]
        for model in models:
            size = LLAMA_SIZES.get(model, model).lower()
            fed = [r for r in runs if r.method == method and r.model == model]
            row.append(cells.cell(f"{method} / {LLAMA_SIZES.get(model, model)}", fed,
                                  [r.metric("eval_ppl", "ppl") for r in fed],
                                  paper_value(rows_csv, "method", method, f"ppl_{size}")))
            if model in PAPER_LLAMA:
                ours = f"{sum(est.gb(model, method)):.2f}G" if method in METHODS else "—"
                row.append(ours_paper(ours, paper_value(rows_csv, "method", method, f"mem_gb_{size}"), suffix="G"))
        rows.append(row)
    notes = cells.finish([
        "Final C4 validation perplexity, ours (paper). Memory = estimated bf16 weights + optimizer states "
        "(`scripts/estimate_memory.py`), not measured.",
        "Paper training tokens: 1.1B / 2.2B / 6.4B / 13.1B (60M / 130M / 350M / 1B).",
    ])
    return Table("Table 1: C4 pre-training, validation perplexity and memory", header, rows, notes)


# ----------------------------------------------------------------------------- Table 1, reduced scale
# reduced_table1 experiment -> the paper's Table 1 row
PAPER_ROW = {"adamw": "Full-Rank", "haar2": "Haar-2", "haar3": "Haar-3", "db2_2": "DB2-2",
             "galore_1_4": "GaLore-1/4", "apollo": "APOLLO", "fira": "Fira"}


def table1_reduced(runs: list[Run], paper: dict) -> Table:
    """The tuned reduced-scale study (scripts/reduced_table1.py) beside the paper's 60M column."""
    import reduced_table1 as rt1

    rows_csv = paper["table1_c4_pretrain"]
    study = [r for r in runs if is_study_run(r)]
    summary = rt1.summarize(study, rt1.load_plan())
    for run in study:
        USED.add(str(run.root / run.path))
    header = ["Method", "ours: ppl at best lr, reduced scale", "best lr", "state vs AdamW", "paper 60M ppl",
              "paper 60M mem"]
    rows = []
    for row in summary["methods"]:
        mean = "—" if row["mean_ppl"] is None else f"{row['mean_ppl']:.2f}"
        if row["std_ppl"] is not None:
            mean += f"±{row['std_ppl']:.2f}"
        if row["n"]:
            mean += f" (n={row['n']}){DAGGER}"
        lr = "—" if row["best_lr"] is None else f"{row['best_lr']:g}"
        if row["best_lr"] is not None and not row["bracketed"]:  # tuned: 4+ run lrs, the best inside them
            lr += " (provisional)"
        state = "—" if row["state_vs_adamw"] is None else f"{row['state_vs_adamw']:.2f}x"
        label = PAPER_ROW.get(row["experiment"])
        rows.append([row["label"], mean, lr, state,
                     _paper_text(paper_value(rows_csv, "method", label, "ppl_60m") if label else None),
                     _paper_text(paper_value(rows_csv, "method", label, "mem_gb_60m") if label else None, "G")])
    notes = [f"{DAGGER} Reduced scale, not comparable in absolute terms with the paper's 60M/1.1B-token numbers: "
             "`results/reduced_table1/README.md` (protocol, lr grids, seeds, figures). Each method at the best lr "
             "of its own grid; mean ± std over the seeds there.",
             "Verdict: " + summary["verdict"],
             f"{summary['runs_used']} runs; {len(summary['missing'])} planned runs missing "
             "(`python scripts/reduced_table1.py` lists them and the commands that run them)."]
    return Table("Table 1 at reduced scale: every method tuned (results/reduced_table1)", header, rows, notes)


def _paper_text(value: float | None, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{suffix}"


# ----------------------------------------------------------------------------- Table 2
TABLE2_STEPS = (20000, 40000, 60000, 80000)
TABLE2_METHODS = {"Haar-2": ("Haar-2",), "GaLore": ("GaLore-1/4", "GaLore"), "Full-Rank": ("Full-Rank",)}


def ppl_at(run: Run, step: int) -> float | None:
    """eval_ppl logged at exactly `step` in the run's metrics.jsonl."""
    for line in run.curve():
        if line.get("step") == step and "eval_ppl" in line:
            return float(line["eval_ppl"])
    return None


def tokens_per_s_per_process(run: Run) -> float | None:
    value = run.metric("train_tokens_per_s", "tokens_per_s")
    if value is None:
        return None
    world = run.metrics.get("world_size") or run.extra.get("world_size") or run.config.get("world_size") or 1
    return value / world


def table2(runs: list[Run], paper: dict) -> Table:
    rows_csv = paper["table2_llama1b_progress"]
    runs = [r for r in pretrain_runs(runs) if r.model == "llama_1b"]
    cells = Cells(paper_tokens(paper))
    header = ["Method"] + [f"{s // 1000}K" for s in TABLE2_STEPS] + ["Tokens/s per GPU"]
    rows = []
    for method, labels in TABLE2_METHODS.items():
        fed = [r for r in runs if r.method in labels]
        row = [method]
        for step in TABLE2_STEPS:
            at_step = [r for r in fed if ppl_at(r, step) is not None]
            row.append(cells.cell(f"{method} / {step // 1000}K", at_step, [ppl_at(r, step) for r in at_step],
                                  paper_value(rows_csv, "method", method, f"ppl_{step // 1000}k")))
        row.append(cells.cell(f"{method} / tokens/s", fed, [tokens_per_s_per_process(r) for r in fed],
                              paper_value(rows_csv, "method", method, "tokens_per_s_per_gpu"), digits=0))
        rows.append(row)
    notes = cells.finish(["LLaMA 1B on C4: validation perplexity at the given step (from metrics.jsonl) and "
                          "training tokens/s per process (paper: per RTX 3090 GPU).",
                          "Paper tokens at 20K/40K/60K/80K steps: 2.6B/5.2B/7.8B/10.4B."])
    return Table("Table 2: LLaMA 1B pre-training progress", header, rows, notes)


# ----------------------------------------------------------------------------- Table 3 / A3
GLUE_ORDER = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")
TABLE3_METHODS = {"Full-Rank": ("Full-Rank",), "Haar-2": ("Haar-2",), "GaLore": ("GaLore-1/4", "GaLore"),
                  "LoRA": ()}


def _is_row(label: str, row: str, labels: tuple) -> bool:
    """Whether a run's method label belongs to a Table 3 row (GaLore at any rank is the GaLore row)."""
    return label in labels or (row == "GaLore" and label.startswith("GaLore"))


def _lr_protocols(runs: list[Run]) -> list[list[Run]]:
    """Scored runs grouped by protocol apart from the lr (an lr grid of one setting is one group)."""
    return group_like([r for r in runs if r.glue_score() is not None], ignore=("optimizer.lr",))


def _best_lr_group(runs: list[Run]) -> list[Run]:
    """Of the preferred setting (``group_like`` order, lr aside), the runs at the learning rate with
    the best mean score (the paper picks the lr per task); they differ in the seed alone."""
    settings = _lr_protocols(runs)
    if not settings:
        return []
    by_lr: dict = defaultdict(list)
    for run in settings[0]:
        by_lr[run.lr].append(run)
    return max(by_lr.values(), key=lambda group: sum(r.glue_score() for r in group) / len(group))


def _other_settings(runs: list[Run]) -> list[Run]:
    """Scored runs outside the preferred setting (named in a cell's notes, not averaged in)."""
    return [r for group in _lr_protocols(runs)[1:] for r in group]


def table3(runs: list[Run], paper: dict) -> Table:
    rows_csv = paper["table3_glue_roberta_base"]
    glue = [r for r in runs if r.kind == "glue"]
    cells = Cells(paper_tokens(paper))
    header = ["Method"] + [GLUE_TASKS[t][0] for t in GLUE_ORDER] + ["Avg"]
    rows, partial = [], []
    for method, labels in TABLE3_METHODS.items():
        row, scores = [method], []
        for task in GLUE_ORDER:
            column = GLUE_TASKS[task][0]
            candidates = [r for r in glue if r.task == task and _is_row(r.method, method, labels)]
            fed = _best_lr_group(candidates)
            values = [r.glue_score() for r in fed]
            shown = fed + _other_settings(candidates)
            row.append(cells.cell(f"{method} / {column}", shown, [r.glue_score() for r in shown],
                                  paper_value(rows_csv, "method", method, column), prefer=fed))
            if values:
                scores.append(sum(values) / len(values))
        avg = f"{sum(scores) / len(scores):.2f}" if len(scores) == len(GLUE_ORDER) else "—"
        if 0 < len(scores) < len(GLUE_ORDER):
            partial.append(f"{method}: mean over the {len(scores)} tasks run = {sum(scores) / len(scores):.2f}")
        row.append(ours_paper(avg, paper_value(rows_csv, "method", method, "avg")))
        rows.append(row)
    metrics = ", ".join(f"{GLUE_TASKS[t][0]} {GLUE_TASKS[t][2]}" for t in GLUE_ORDER)
    notes = [f"GLUE dev scores x100 ({metrics}); paper: RoBERTa-base, {GLUE_PAPER_EPOCHS} epochs. Where runs at "
             "several learning rates exist, the cell shows the lr with the best mean (as the paper tunes lr per task)."]
    notes += [f"Avg needs all 8 tasks; {p}." for p in partial]
    return Table("Table 3: GLUE fine-tuning", header, rows, cells.finish(notes))


def tableA3(runs: list[Run], paper: dict) -> Table:
    rows_csv = paper["tableA3_glue_lr"]
    gwt = [r for r in runs if r.kind == "glue" and r.method == "Haar-2"]
    cells = Cells(paper_tokens(paper))
    columns = [GLUE_TASKS[t][0] for t in GLUE_ORDER]
    paper_lrs = [row["lr"] for row in rows_csv if _is_number(row["lr"])]
    lrs = sorted({float(x) for x in paper_lrs} | {r.lr for r in gwt if r.lr is not None})
    header = ["lr"] + columns
    rows = []
    for lr in lrs:
        key = next((x for x in paper_lrs if float(x) == lr), None)
        row = [f"{lr:.0e}"]
        for task, column in zip(GLUE_ORDER, columns):
            fed = [r for r in gwt if r.task == task and r.lr is not None and abs(r.lr - lr) <= 1e-12 + 1e-6 * lr]
            p = paper_value(rows_csv, "lr", key, column) if key else None
            row.append(cells.cell(f"lr {lr:.0e} / {column}", fed, [r.glue_score() for r in fed], p))
        rows.append(row)
    for label in ("chosen_lr", "batch_size"):
        paper_row = next(row for row in rows_csv if row["lr"] == label)
        row = [label.replace("_", " ")]
        for task, column in zip(GLUE_ORDER, columns):
            ours = "—"
            fed = [r for r in gwt if r.task == task]
            if label == "chosen_lr" and fed:
                ours = f"{_best_lr_group(fed)[0].lr:.0e}" if _best_lr_group(fed) else "—"
            elif label == "batch_size" and fed:
                sizes = sorted({str(r.config.get("trainer", {}).get("batch_size", r.config.get("trainer", {})
                                                                     .get("total_batch_size", "?"))) for r in fed})
                ours = "/".join(sizes)
            row.append(f"{ours} ({paper_row[column] or '—'})")
        rows.append(row)
    notes = ["GLUE dev scores x100 of Haar-2 (GWT-AdamW, Haar level 2) per learning rate. The paper's 97.35 "
             "(MNLI, 7e-06) is printed as in the paper."]
    return Table("Table A3: GLUE learning-rate grid for Haar-2", header, rows, cells.finish(notes))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- Table 4 / A4
def table4(runs: list[Run], paper: dict, est: Estimator) -> Table:
    rows_csv = paper["table4_levels"]
    runs = [r for r in pretrain_runs(runs) if r.optimizer.get("name") == "gwt" and r.method.startswith("Haar-")]
    models = _sizes(runs, TABLE4_MODELS)
    cells = Cells(paper_tokens(paper))
    header = ["Method"]
    for model in models:
        size = LLAMA_SIZES.get(model, model)
        header += ([f"{size} states"] if model in TABLE4_MODELS else []) + [f"{size} tokens/s"]
    methods = [row["method"] for row in rows_csv]
    methods += sorted({r.method for r in runs} - set(methods))
    rows = []
    for method in methods:
        row = [method]
        for model in models:
            size = LLAMA_SIZES.get(model, model)
            if model in TABLE4_MODELS:
                ours = f"{est.gb(model, method)[1]:.2f}G" if method in METHODS else "—"
                row.append(ours_paper(ours, paper_value(rows_csv, "method", method, f"mem_gb_{size.lower()}"),
                                      suffix="G"))
            fed = [r for r in runs if r.method == method and r.model == model]
            row.append(cells.cell(f"{method} / {size} tokens/s", fed, [tokens_per_s_per_process(r) for r in fed],
                                  paper_value(rows_csv, "method", method, f"tokens_per_s_{size.lower()}"), digits=0))
        rows.append(row)
    notes = ["States: estimated bf16 optimizer-state memory (`scripts/estimate_memory.py`). Tokens/s: measured "
             "training throughput per process of the runs (paper: per RTX 3090 GPU); compare only runs on "
             "the same machine."]
    return Table("Table 4: GWT levels, optimizer memory and throughput", header, rows, cells.finish(notes))


def tableA4(runs: list[Run], paper: dict, est: Estimator) -> Table:
    table = table_a4(paper, est)
    measured = [r for r in runs if r.kind == "pretrain" and not is_study_run(r)
                and r.metric("optimizer_state_bytes") is not None]
    if measured:
        table.notes.append("Measured optimizer-state bytes of runs (result.json `optimizer_state_bytes`, states in "
                           "the run's own dtype) beside the same formula applied to the run's model config and "
                           "state dtype:")
        for run in measured:
            bytes_measured = run.metric("optimizer_state_bytes")
            estimated = run_state_estimate(run)
            versus = f", {estimated:,} B estimated" if estimated is not None else ""
            table.notes.append(f"{run.method} / {run.size}: {int(bytes_measured):,} B measured{versus}, "
                               f"`{run.path.as_posix()}`")
    return table


def run_state_estimate(run: Run) -> int | None:
    """The memory formula on a run's own model config (its sizes and vocabulary) and state dtype."""
    model = run.config.get("model") or {}
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
    if run.method not in METHODS or not all(isinstance(model.get(k), int) for k in keys):
        return None
    if str(run.optimizer.get("state_dtype") or "float32").replace("torch.", "") not in ("float32", "fp32"):
        return None
    shapes = llama_shapes({k: model[k] for k in keys})
    return estimate(shapes, run.method, state_bytes=4, hidden_size=model["hidden_size"])[1]


# ----------------------------------------------------------------------------- main
def build(tables: list[str], runs: list[Run], paper: dict, est: Estimator) -> list[Table]:
    builders = {"1": lambda: table1(runs, paper, est), "1R": lambda: table1_reduced(runs, paper),
                "2": lambda: table2(runs, paper),
                "3": lambda: table3(runs, paper), "4": lambda: table4(runs, paper, est),
                "A3": lambda: tableA3(runs, paper), "A4": lambda: tableA4(runs, paper, est)}
    USED.clear()
    built = [builders[t]() for t in tables]
    unused = [r for r in runs if str(r.root / r.path) not in USED]
    if unused:
        built.append(Table("Runs in no table cell", ["Run", "Kind", "Model", "Method", "Why"],
                           [[f"`{r.path.as_posix()}`", r.kind, r.model, r.method, _why_unused(r)] for r in unused],
                           ["Ablation runs (alpha, limiter) feed only the figures (`scripts/plot_curves.py`)."]))
    return built


def _why_unused(run: Run) -> str:
    if run.kind == "glue":
        if run.task not in GLUE_ORDER:
            return f"task {run.task} is not in Table 3"
        return "not Full-Rank / Haar-2 / GaLore, or not the best lr of its cell"
    if is_study_run(run):
        return "a reduced Table 1 study run (table 1R)"
    if run not in pretrain_runs([run]):
        return "an ablation (alpha or limiter differs from the paper's setting)"
    return "its method has no row in the selected tables"


def render(argv: list[str] | None = None) -> tuple[str, argparse.Namespace, int]:
    """The document ``main(argv)`` writes (its header names ``argv``), the parsed arguments and the run count."""
    parser = argparse.ArgumentParser(description="Render the paper's tables from results/**/result.json.")
    parser.add_argument("--results", nargs="+", default=[str(REPO / "results")],
                        help="folders searched for result.json (e.g. results runs/sweeps)")
    parser.add_argument("--paper-dir", default=str(REPO / "results" / "paper"), help="the paper's CSVs")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), metavar="T",
                        help=f"which tables; choices: {' '.join(TABLES)}")
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars instead of Markdown")
    parser.add_argument("--out", default=None, help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    bad = [t for t in args.tables if t not in TABLES]
    if bad:
        parser.error(f"--tables {' '.join(bad)}: unknown; valid: {' '.join(TABLES)}")
    runs = []
    for folder in args.results:
        if not Path(folder).is_dir():
            parser.error(f"--results {folder}: no such folder")
        runs += load_runs(folder)
    paper = load_paper(args.paper_dir)
    est = Estimator()
    body = [t.latex() if args.latex else t.markdown() for t in build(args.tables, runs, paper, est)]
    header = "" if args.latex else (
        "# Reproduced tables\n\nGenerated by `python scripts/make_tables.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + f"` from {len(runs)} run(s) under {', '.join(f'`{_rel(Path(f))}`' for f in args.results)}. "
        "Each cell: ours (paper).\n\n")
    return header + "\n".join(body), args, len(runs)


def main(argv: list[str] | None = None) -> int:
    text, args, count = render(argv)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({count} runs)")
    else:
        print(text)
    return 0


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix() + "/"
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
