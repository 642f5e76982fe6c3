"""Figures 2, 3, 5 and 6 of the paper as PNG, from the metrics.jsonl of this repository's runs.

Usage:
    python scripts/plot_curves.py                          # every figure that has runs -> results/figures/
    python scripts/plot_curves.py --figures 2 5 --out DIR --results results runs/sweeps

What each figure plots (one panel per model size that has runs; curves from every
`result.json` + `metrics.jsonl` found under --results):
- Figure 2: validation perplexity vs step; rows Haar-1 / Haar-2 / Haar-3 against GaLore-1/2,
  1/4, 1/8 (equal optimizer memory) and Full-Rank.
- Figure 3: Haar-2 validation perplexity vs step for each alpha (a, b), and Haar level 1-5 at
  alpha 0.25 (c, d).
- Figure 5: Haar-2 training loss vs step with and without the norm-growth limiter.
- Figure 6: validation perplexity vs step of Adafactor and GWT-Adafactor (any optimizer whose
  registry name contains "adafactor").
The legend of every curve names its run's scale (tokens seen); the subtitle names the data.
Runs of a tuning study (config key ``study``, e.g. results/reduced_table1) are left out: their
figures come from the study's own script (scripts/reduced_table1.py).
A row of panels is drawn only where some model size has at least two settings to compare; a
figure with no such row is not written.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gwt_lab.results import LLAMA_SIZES, Run, human_count, is_study_run, load_runs  # noqa: E402

FIGURES = ("2", "3", "5", "6")
PAPER_SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b")

Selector = Callable[[Run], "str | None"]  # run -> curve label, None = not in this panel


# ----------------------------------------------------------------------------- curves
def eval_curve(run: Run) -> tuple[list[int], list[float]]:
    points = [(line["step"], line["eval_ppl"]) for line in run.curve() if "eval_ppl" in line and "step" in line]
    return [p[0] for p in points], [p[1] for p in points]


def loss_curve(run: Run, smooth: float = 0.0) -> tuple[list[int], list[float]]:
    steps, values, ema = [], [], None
    for line in run.curve():
        if "loss" in line and "eval_ppl" not in line and "step" in line:
            ema = line["loss"] if ema is None else smooth * ema + (1 - smooth) * line["loss"]
            steps.append(line["step"])
            values.append(ema)
    return steps, values


def _gwt(run: Run, *, wavelet: str = "haar", level: int | None = None, adafactor: bool = False) -> bool:
    opt = run.optimizer
    name = "gwt_adafactor" if adafactor else "gwt"
    return (run.kind == "pretrain" and opt.get("name") == name and opt.get("wavelet", "haar") == wavelet
            and (level is None or opt.get("level", 2) == level))


def _paper_alpha(run: Run) -> bool:
    """GWT at the paper's pre-training setting: alpha 0.25 with the norm-growth limiter on."""
    return run.alpha in (None, 0.25) and run.optimizer.get("limiter", 1.01) not in (None, 0, False)


# ----------------------------------------------------------------------------- figure specs
def figure2_rows() -> list[tuple[str, Selector]]:
    rows = []
    for level in (1, 2, 3):
        def select(run: Run, level=level) -> str | None:
            if run.kind != "pretrain":
                return None
            if _gwt(run, level=level) and _paper_alpha(run):
                return f"Haar-{level}"
            if run.method in (f"GaLore-1/{2 ** level}",) or run.method == "Full-Rank":
                return run.method
            return None
        rows.append((f"Haar-{level} vs GaLore-1/{2 ** level}", select))
    return rows


def figure3_rows() -> list[tuple[str, Selector]]:
    def alpha(run: Run) -> str | None:
        limiter_on = run.optimizer.get("limiter", 1.01) not in (None, 0, False)
        return f"alpha={run.alpha:g}" if _gwt(run, level=2) and run.alpha is not None and limiter_on else None

    def level(run: Run) -> str | None:
        return f"Haar-{run.optimizer.get('level', 2)}" if _gwt(run) and _paper_alpha(run) else None

    return [("Haar-2, scale alpha", alpha), ("GWT level l (alpha 0.25)", level)]


def figure5_rows() -> list[tuple[str, Selector]]:
    def limiter(run: Run) -> str | None:
        if not (_gwt(run, level=2) and run.alpha in (None, 0.25)):
            return None
        gamma = run.optimizer.get("limiter", 1.01)
        return "Haar-2 without NL" if gamma in (None, 0, False) else f"Haar-2 with NL (gamma {gamma:g})"

    return [("Norm-growth limiter (training loss)", limiter)]


def figure6_rows() -> list[tuple[str, Selector]]:
    def adafactor(run: Run) -> str | None:
        name = str(run.optimizer.get("name", ""))
        if run.kind != "pretrain" or "adafactor" not in name:
            return None
        return "Adafactor (full rank)" if name == "adafactor" else run.method

    return [("Adafactor with GWT", adafactor)]


FIGURE_SPECS = {
    "2": ("Figure 2: GWT vs GaLore at equal memory (validation perplexity)", figure2_rows, "eval"),
    "3": ("Figure 3: alpha and level ablations, Haar-2 (validation perplexity)", figure3_rows, "eval"),
    "5": ("Figure 5: norm-growth limiter (training loss)", figure5_rows, "loss"),
    "6": ("Figure 6: GWT with Adafactor (validation perplexity)", figure6_rows, "eval"),
}


# ----------------------------------------------------------------------------- drawing
def panel_runs(runs: list[Run], select: Selector) -> dict[str, dict[str, list[Run]]]:
    """{model: {label: runs}} for the runs this panel row selects."""
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        label = select(run)
        if label is not None:
            grouped[run.model][label].append(run)
    return grouped


def _models(grouped_rows: list[dict]) -> list[str]:
    present = {m for g in grouped_rows for m in g}
    ordered = [m for m in PAPER_SIZES if m in present] + [m for m in LLAMA_SIZES if m in present - set(PAPER_SIZES)]
    return ordered + sorted(present - set(ordered))


def draw_figure(number: str, runs: list[Run], out_dir: Path, smooth: float = 0.0) -> Path | None:
    """Write fig<number>.png; None when no run matches any of its panels."""
    title, rows_fn, kind = FIGURE_SPECS[number]
    rows = [(name, panel_runs(runs, select)) for name, select in rows_fn()]
    # a row is a comparison: keep it only where some panel has two settings or more
    rows = [(name, g) for name, g in rows if any(len(labels) >= 2 for labels in g.values())]
    models = _models([g for _, g in rows])
    if not models:
        return None
    labels = sorted({label for _, g in rows for curves in g.values() for label in curves})
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}  # same colour per setting
    fig, axes = plt.subplots(len(rows), len(models), figsize=(max(6.0, 4.2 * len(models)), 3.4 * len(rows)),
                             squeeze=False)
    for r, (row_name, grouped) in enumerate(rows):
        for c, model in enumerate(models):
            ax = axes[r][c]
            curves = grouped.get(model, {})
            data = sorted({run.data for group in curves.values() for run in group})
            ax.set_title(f"{LLAMA_SIZES.get(model, model)}: {row_name}" + (f"\n({', '.join(data)})" if data else ""),
                         fontsize=9)
            for label in sorted(curves):
                for run in curves[label]:
                    steps, values = eval_curve(run) if kind == "eval" else loss_curve(run, smooth)
                    if not steps:
                        continue
                    seeds = {r.seed for r in curves[label]}
                    seed = ""
                    if len(curves[label]) > 1:  # several runs per curve label: tell them apart
                        seed = f", seed {run.seed}" if len(seeds) == len(curves[label]) else f", {run.path.name}"
                    ax.plot(steps, values, marker="o" if len(steps) < 12 else None, markersize=3, color=colors[label],
                            label=f"{label}{seed} ({human_count(run.tokens)} tok)")
            ax.set_xlabel("step")
            ax.set_ylabel("validation perplexity" if kind == "eval" else "training loss")
            if kind == "eval":
                ax.set_yscale("log")
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"fig{number}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot the paper's Figures 2, 3, 5, 6 from metrics.jsonl.")
    parser.add_argument("--results", nargs="+", default=[str(REPO / "results")],
                        help="folders searched for result.json (+ metrics.jsonl)")
    parser.add_argument("--figures", nargs="+", default=list(FIGURES), metavar="F", help=f"choices: {' '.join(FIGURES)}")
    parser.add_argument("--out", default=str(REPO / "results" / "figures"), help="folder for fig<N>.png")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA factor in [0, 1) for training-loss curves")
    args = parser.parse_args(argv)
    bad = [f for f in args.figures if f not in FIGURES]
    if bad:
        parser.error(f"--figures {' '.join(bad)}: unknown; valid: {' '.join(FIGURES)}")
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: must be in [0, 1)")
    runs = []
    for folder in args.results:
        if not Path(folder).is_dir():
            parser.error(f"--results {folder}: no such folder")
        runs += [r for r in load_runs(folder) if not is_study_run(r)]  # studies draw their own figures
    for number in args.figures:
        path = draw_figure(number, runs, Path(args.out), args.smooth)
        print(f"figure {number}: {path}" if path else f"figure {number}: no two settings to compare in the runs, nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
