"""Reduced-scale Table 1: every optimizer tuned (lr grid, then 3 seeds at the best lr) on one small
LLaMA, summarised from the committed runs.

Usage:
    python scripts/reduced_table1.py                      # writes summary.json, README.md, two PNGs and
                                                          # the study's block in the project's README.md
    python scripts/reduced_table1.py --study results/reduced_table1 --no-figures

Reads every finished run (``result.json``) under ``<study>/runs``; writes ``<study>/summary.json``
(per method: the lr grid with the final validation perplexity of each lr, the best lr, the per-seed
perplexities at the best lr, mean, std, optimizer state bytes; the Haar level and alpha series),
``<study>/README.md`` (the table, the verdict, what is missing and the commands that run it),
``<study>/lr_sensitivity.png`` and ``<study>/levels.png``. Nothing is invented: a run that does not
exist is reported as missing. The plan (methods, lr grids, seeds, levels, alphas) is read from
configs/experiment/reduced_table1/*.yaml and configs/sweep/reduced_table1_*.yaml.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gwt_lab.results import Run, config_differences, load_runs, protocol  # noqa: E402

STUDY = REPO / "results" / "reduced_table1"
CONFIGS = REPO / "configs"
LR_SWEEP = "reduced_table1_lr"
# Table rows: experiment file (configs/experiment/reduced_table1/<name>.yaml) -> label.
LABELS = {
    "adamw": "Full-Rank (AdamW)", "haar2": "GWT Haar-2", "haar3": "GWT Haar-3", "db2_2": "GWT DB2-2",
    "galore_1_4": "GaLore-1/4", "apollo": "APOLLO", "apollo_mini": "APOLLO-Mini", "fira": "Fira",
    "adam_mini": "Adam-mini", "muon": "Muon",
}
# Keys that vary inside the study: the optimizer (per method), the seed, the sweep's bookkeeping.
PER_RUN_KEYS = ("optimizer", "study", "seed")
VERDICT_ROWS = ("haar2", "adamw", "galore_1_4")
#: A method's lr is tuned once this many grid values have run and the best of them has a run value
#: on each side ("bracketed"); the grid's other values are then not needed.
MIN_GRID = 4


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What the study runs: rows (experiment -> method key, lr grid), seeds, level and alpha series."""

    methods: dict[str, dict]  # experiment name -> {"method": key, "lr_grid": [...]}
    seeds: list[int]          # the grid seed first
    levels: list[int]
    alphas: list[float]
    study_name: str = "reduced_table1"


def _sweep_params(name: str) -> dict[str, str]:
    import yaml

    data = yaml.safe_load((CONFIGS / "sweep" / f"{name}.yaml").read_text())
    return {k: str(v) for k, v in data["hydra"]["sweeper"]["params"].items()}


def _values(text: str, cast) -> list:
    return [cast(v.strip().strip("'\"")) for v in text.split(",")]


def load_plan() -> Plan:
    """The plan from the config files (composed with Hydra, so interpolated method keys resolve)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    experiments = [e.split("/", 1)[1] for e in _values(_sweep_params(LR_SWEEP)["experiment"], str)]
    methods = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for exp in experiments:
            cfg = compose("train_llama", overrides=[f"experiment=reduced_table1/{exp}"])
            methods[exp] = {"method": str(cfg.study.method),
                            "lr_grid": [float(x) for x in OmegaConf.to_container(cfg.study.lr_grid)]}
            seed, name = int(cfg.seed), str(cfg.study.name)
    extra = _values(_sweep_params("reduced_table1_seeds")["seed"], int)
    levels = _values(_sweep_params("reduced_table1_level")["optimizer.level"], int)
    alphas = _values(_sweep_params("reduced_table1_alpha")["optimizer.alpha"], float)
    return Plan(methods, [seed] + [s for s in extra if s != seed], levels, alphas, name)


# ----------------------------------------------------------------------------- helpers
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _ppl(run: Run) -> float | None:
    return run.metric("eval_ppl")


def _method(run: Run) -> str | None:
    study = run.config.get("study")
    return str(study.get("method")) if isinstance(study, dict) and study.get("method") else None


def _gwt_key(wavelet: str, level: int, alpha: float) -> str:
    """The method key of a GWT run (configs/experiment/reduced_table1/haar2.yaml: study.method)."""
    return f"gwt-{wavelet}-L{level}-a{alpha}"


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def split_protocol(runs: list[Run], ignore: tuple[str, ...] = PER_RUN_KEYS) -> tuple[list[Run], list[dict]]:
    """The runs sharing the most common protocol (config outside ``ignore``; by default the
    optimizer, seed and study keys) and a description of every other run (excluded, never mixed in)."""
    if not runs:
        return [], []
    keys = [protocol(r.config, ignore) for r in runs]
    reference = max(set(keys), key=lambda k: (keys.count(k), k))
    ref_run = runs[keys.index(reference)]
    kept, excluded = [], []
    for run, key in zip(runs, keys):
        if key == reference:
            kept.append(run)
        else:
            diff = config_differences(run.config, ref_run.config, ignore)
            excluded.append({"run": run.path.as_posix(), "differs_in": diff})
    return kept, excluded


def _pick(runs: list[Run], method: str, lr: float | None = None, seed: int | None = None) -> list[Run]:
    return [r for r in runs if _method(r) == method and (lr is None or (r.lr is not None and _close(r.lr, lr)))
            and (seed is None or r.seed == seed)]


# ----------------------------------------------------------------------------- the summary
def summarize(runs: list[Run], plan: Plan, incomplete: list[str] = ()) -> dict:
    """summary.json's content from finished ``runs`` (see the module docstring)."""
    runs, excluded = split_protocol([r for r in runs if _ppl(r) is not None])
    grid_seed = plan.seeds[0]
    missing: list[str] = []
    commands: list[str] = []
    rows = []
    for exp, spec in plan.methods.items():
        key = spec["method"]
        mine, other = split_protocol(_pick(runs, key), ignore=("study", "seed", "optimizer.lr"))
        excluded += other
        lrs = sorted({*spec["lr_grid"], *(r.lr for r in mine if r.lr is not None)})
        grid = []
        for lr in lrs:
            at = _pick(mine, key, lr, grid_seed)
            grid.append({"lr": lr, "ppl": _ppl(at[0]) if at else None, "run": at[0].path.as_posix() if at else None})
        done = [g for g in grid if g["ppl"] is not None]
        best = min(done, key=lambda g: g["ppl"]) if done else None
        best_lr = best["lr"] if best else None
        at_edge = bool(best) and len(grid) > 1 and best_lr in (grid[0]["lr"], grid[-1]["lr"])  # of the whole grid
        grid_complete = len(done) == len(grid)
        bracketed = len(done) >= MIN_GRID and best_lr not in (done[0]["lr"], done[-1]["lr"])
        if not bracketed:
            missing += [f"{LABELS.get(exp, exp)}: lr {g['lr']:g}, seed {grid_seed}" for g in grid if g["ppl"] is None]
        seeds, state_bytes, cpu_s = {}, None, 0.0
        if best_lr is not None:
            for seed in plan.seeds:
                at = _pick(mine, key, best_lr, seed)
                seeds[str(seed)] = _ppl(at[0]) if at else None
                if at:
                    state_bytes = at[0].metric("optimizer_state_bytes")
                elif bracketed:
                    missing.append(f"{LABELS.get(exp, exp)}: seed {seed} at lr {best_lr:g}")
            if bracketed and any(v is None for v in seeds.values()):
                commands.append(f"OMP_NUM_THREADS=1 python train_llama.py -m +sweep=reduced_table1_seeds "
                                f"experiment=reduced_table1/{exp} optimizer.lr={best_lr:g}")
        if at_edge and grid_complete:
            commands.append(f"# {LABELS.get(exp, exp)}: best lr {best_lr:g} at the grid's edge: extend "
                            f"study.lr_grid in configs/experiment/reduced_table1/{exp}.yaml and rerun the lr sweep")
        elif not bracketed:
            commands.append(f"OMP_NUM_THREADS=1 python train_llama.py -m +sweep={LR_SWEEP} experiment=reduced_table1/{exp}")
        values = [v for v in seeds.values() if v is not None]
        mean, std = _stats(values)
        cpu_s = sum(r.metric("train_time_s") or 0.0 for r in mine)
        rows.append({"experiment": exp, "label": LABELS.get(exp, exp), "method": key, "grid": grid,
                     "best_lr": best_lr, "best_lr_at_grid_edge": at_edge, "grid_complete": grid_complete,
                     "bracketed": bracketed,
                     "seeds": seeds, "n": len(values), "mean_ppl": mean, "std_ppl": std,
                     "optimizer_state_bytes": state_bytes, "train_time_s": cpu_s})
    adamw_bytes = next((r["optimizer_state_bytes"] for r in rows if r["experiment"] == "adamw"), None)
    for row in rows:
        b = row["optimizer_state_bytes"]
        row["state_vs_adamw"] = b / adamw_bytes if b and adamw_bytes else None

    haar = next((r for r in rows if r["experiment"] == "haar2"), None)
    haar_lr = haar["best_lr"] if haar and haar["bracketed"] else None
    series = {}
    for name, values, make_key, kind in (
            ("levels", plan.levels, lambda v: _gwt_key("haar", v, 0.25), "level"),
            ("alphas", plan.alphas, lambda v: _gwt_key("haar", 2, v), "alpha")):
        points = []
        for v in values:
            at = _pick(runs, make_key(v), haar_lr, grid_seed) if haar_lr is not None else []
            points.append({kind: v, "ppl": _ppl(at[0]) if at else None,
                           "optimizer_state_bytes": at[0].metric("optimizer_state_bytes") if at else None,
                           "run": at[0].path.as_posix() if at else None})
            if haar_lr is not None and not at:
                missing.append(f"Haar {kind} {v:g} at lr {haar_lr:g}, seed {grid_seed}")
        series[name] = {"lr": haar_lr, "points": points}
        if haar_lr is None:
            missing.append(f"Haar {kind} series: waits for Haar-2's best lr (bracketed: {MIN_GRID} or more lrs run, "
                           "the best with a run lr on each side)")
        elif any(p["ppl"] is None for p in points):
            sweep = "reduced_table1_level" if kind == "level" else "reduced_table1_alpha"
            commands.append(f"OMP_NUM_THREADS=1 python train_llama.py -m +sweep={sweep} optimizer.lr={haar_lr:g}")
    return {
        "study": plan.study_name,
        "seeds": plan.seeds,
        "methods": rows,
        "level_series": series["levels"],
        "alpha_series": series["alphas"],
        "verdict": verdict(rows, len(plan.seeds)),
        "ranking": ranking(rows, len(plan.seeds)),
        "runs_used": len(runs),
        "train_time_s_total": sum(r.metric("train_time_s") or 0.0 for r in runs),
        "excluded_runs": excluded,
        "incomplete_runs": list(incomplete),
        "missing": missing,
        "next_commands": commands,
    }


def verdict(rows: list[dict], n_seeds: int = 3) -> str:
    """The paper's ordering Haar-2 <= Full-Rank < GaLore-1/4, tested on the seed means at the best lr."""
    by = {r["experiment"]: r for r in rows}
    need = [by[e] for e in VERDICT_ROWS if e in by]
    short = [f"{r['label']} ({r['n']}/{n_seeds} seeds"
             f"{', best lr at the grid edge' if r['best_lr_at_grid_edge'] else ''}"
             f"{'' if r['bracketed'] or r['best_lr_at_grid_edge'] else ', best lr not yet bracketed'})"
             for r in need if r["n"] < n_seeds or not r["bracketed"]]
    if len(need) < len(VERDICT_ROWS) or short:
        return (f"Verdict pending: the paper's ordering Haar-2 <= Full-Rank < GaLore-1/4 needs {n_seeds} seeds at the "
                f"best lr of each; not yet there: {', '.join(short)}.")
    haar, full, galore = need

    def compare(a: dict, b: dict) -> tuple[float, bool]:
        diff = a["mean_ppl"] - b["mean_ppl"]
        spread = (a["std_ppl"] or 0.0) + (b["std_ppl"] or 0.0)
        return diff, abs(diff) > spread

    d1, big1 = compare(haar, full)
    d2, big2 = compare(full, galore)
    holds = d1 <= 0 and d2 < 0
    def part(a, b, d, big):
        return (f"{a['label']} {a['mean_ppl']:.2f} ± {a['std_ppl'] or 0:.2f} vs {b['label']} "
                f"{b['mean_ppl']:.2f} ± {b['std_ppl'] or 0:.2f} (difference {d:+.2f}, "
                f"{'larger' if big else 'not larger'} than the sum of the two seed standard deviations)")
    return (f"With every method at its best lr ({n_seeds} seeds), the paper's ordering Haar-2 <= Full-Rank < GaLore-1/4 "
            f"{'holds' if holds else 'does not hold'} at this scale: {part(haar, full, d1, big1)}; "
            f"{part(full, galore, d2, big2)}.")


def ranking(rows: list[dict], n_seeds: int = 3) -> list[dict]:
    """The methods whose lr is bracketed and whose seeds have all run, by mean perplexity."""
    done = [r for r in rows if r["bracketed"] and r["n"] >= n_seeds]
    return [{"experiment": r["experiment"], "label": r["label"], "best_lr": r["best_lr"], "mean_ppl": r["mean_ppl"],
             "std_ppl": r["std_ppl"], "state_vs_adamw": r["state_vs_adamw"]}
            for r in sorted(done, key=lambda r: r["mean_ppl"])]


# ----------------------------------------------------------------------------- outputs
def readme(summary: dict, protocol_text: str) -> str:
    lines = ["# Reduced-scale Table 1: every optimizer tuned", "",
             "Generated by `python scripts/reduced_table1.py` from the runs in `runs/` (do not edit by hand).", "",
             protocol_text, "",
             "Each method: a learning-rate grid at seed " f"{summary['seeds'][0]}, then seeds "
             f"{', '.join(map(str, summary['seeds'][1:]))} at the grid's best lr, once at least {MIN_GRID} grid "
             "values have run and the best has a run value on each side (— in the grid: not run, and not "
             "needed once the best is bracketed). Perplexity: final validation "
             "perplexity; mean ± sample standard deviation over the seeds at the best lr (n = seeds done). "
             "State: optimizer state bytes measured in the run, relative to AdamW.", "",
             "| Method | lr grid: validation ppl | best lr | ppl at best lr (mean ± std) | n | state vs AdamW |",
             "|---|---|---|---|---|---|"]
    for row in summary["methods"]:
        grid = ", ".join(f"{g['lr']:g}: {_fmt(g['ppl'])}" for g in row["grid"])
        best = "—" if row["best_lr"] is None else f"{row['best_lr']:g}"
        if row["best_lr_at_grid_edge"] and row["grid_complete"]:
            best += " (at the grid's edge: extend the grid)"
        elif row["best_lr"] is not None and not row["bracketed"]:
            best += f" (provisional: not yet bracketed by {MIN_GRID}+ run lrs)"
        mean = _fmt(row["mean_ppl"]) + ("" if row["std_ppl"] is None else f" ± {row['std_ppl']:.2f}")
        state = "—" if row["state_vs_adamw"] is None else f"{row['state_vs_adamw']:.2f}x"
        lines.append(f"| {row['label']} | {grid} | {best} | {mean} | {row['n']} | {state} |")
    lines += ["", "**Verdict.** " + summary["verdict"], ""]
    if summary["ranking"]:
        lines += ["**Ranking** of the methods tuned so far (bracketed best lr, all seeds run), best first: "
                  + "; ".join(f"{r['label']} {r['mean_ppl']:.2f} ± {r['std_ppl']:.2f} ({r['state_vs_adamw']:.2f}x state)"
                              if r["state_vs_adamw"] is not None else f"{r['label']} {r['mean_ppl']:.2f} ± {r['std_ppl']:.2f}"
                              for r in summary["ranking"]), ""]
    for name, title, key in (("level_series", "Haar level series (alpha 0.25)", "level"),
                             ("alpha_series", "Haar-2 alpha series", "alpha")):
        s = summary[name]
        lr = "not yet fixed" if s["lr"] is None else f"{s['lr']:g}"
        lines += [f"**{title}**, at Haar-2's best lr ({lr}), seed {summary['seeds'][0]}: "
                  + ", ".join(f"{key} {p[key]:g}: {_fmt(p['ppl'])}" for p in s["points"]), ""]
    hours = summary["train_time_s_total"] / 3600
    lines += [f"Runs used: {summary['runs_used']} ({hours:.2f} h of training time, one thread each).", ""]
    if summary["excluded_runs"]:
        lines += ["Runs left out (another protocol, never averaged in):", ""]
        lines += [f"- `{e['run']}`: {'; '.join(e['differs_in'])}" for e in summary["excluded_runs"]] + [""]
    if summary["incomplete_runs"]:
        lines += ["Unfinished run folders (no result.json): " + ", ".join(f"`{p}`" for p in summary["incomplete_runs"]), ""]
    if summary["missing"]:
        lines += [f"Missing runs ({len(summary['missing'])}), shown as — above and never filled in:", ""]
        lines += [f"- {m}" for m in summary["missing"]] + [""]
    if summary["next_commands"]:
        lines += ["Commands that run what is missing (each resumable; finished runs are skipped):", "", "```"]
        lines += summary["next_commands"] + ["```", ""]
    lines += ["![lr sensitivity](lr_sensitivity.png)", "", "![levels](levels.png)", ""]
    return "\n".join(lines)


#: The part of the project's README that this script writes (between the two markers).
README_BEGIN = "<!-- reduced_table1:begin (written by python scripts/reduced_table1.py; do not edit) -->"
README_END = "<!-- reduced_table1:end -->"


def readme_block(summary: dict) -> str:
    """The study's standing for the project's README: the ranking table, the verdict, the level and
    alpha series and what is still missing, all from ``summary``."""
    hours = summary["train_time_s_total"] / 3600
    missing = len(summary["missing"])
    lines = [f"**Where it stands** ({summary['runs_used']} runs, {hours:.1f} hours of training time, one thread per run"
             + (f"; {missing} runs still missing, listed with their commands in `results/reduced_table1/README.md`"
                if missing else "; every planned run done") + "). Validation perplexity, mean ± std of "
             f"{len(summary['seeds'])} seeds at each method's bracketed best lr (in brackets: the lr and the "
             "optimizer state relative to AdamW), best first:", ""]
    ranked = summary["ranking"]
    if ranked:
        lines += ["| " + " | ".join(r["label"] for r in ranked) + " |", "|" + "---|" * len(ranked),
                  "| " + " | ".join(f"{r['mean_ppl']:.2f} ± {r['std_ppl']:.2f} ({r['best_lr']:g}, "
                                    + ("—" if r["state_vs_adamw"] is None else f"{r['state_vs_adamw']:.2f}x") + ")"
                                    for r in ranked) + " |", ""]
    lines += [summary["verdict"], ""]
    series = []
    for name, title, key in (("level_series", "Haar levels", "level"), ("alpha_series", "alpha (Haar-2)", "alpha")):
        s = summary[name]
        if s["lr"] is not None:
            series.append(f"{title} at lr {s['lr']:g}, seed {summary['seeds'][0]}: "
                          + ", ".join(f"{p[key]:g}: {_fmt(p['ppl'])}" for p in s["points"]))
    if series:
        lines += ["; ".join(series) + ".", ""]
    tuned = {r["experiment"] for r in ranked}
    untuned = [r["label"] for r in summary["methods"] if r["experiment"] not in tuned]
    if untuned:
        lines += ["Not yet tuned (lr not bracketed or seeds missing): " + ", ".join(untuned) + ".", ""]
    return "\n".join([README_BEGIN, *lines, README_END])


def update_readme(path: Path, block: str) -> bool:
    """Replace the text between the markers in ``path`` by ``block``; False (and nothing written)
    when the file or either marker is missing."""
    if not path.is_file():
        return False
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[:start] + block + text[end + len(README_END):]
    if new != text:
        path.write_text(new)
    return True


def protocol_description(runs: list[Run]) -> str:
    if not runs:
        return "No finished runs yet."
    c = runs[0].config
    m, t = c.get("model", {}), c.get("trainer", {})
    tokens = t.get("max_steps", 0) * t.get("total_batch_size", 0) * t.get("seq_len", 0)
    return (f"Protocol: LLaMA hidden {m.get('hidden_size')}, {m.get('num_hidden_layers')} layers, "
            f"{m.get('num_attention_heads')} heads, vocabulary {m.get('vocab_size')} "
            f"({runs[0].metric('num_parameters') or 0:,.0f} parameters); data {runs[0].data}; "
            f"{t.get('max_steps')} steps x {t.get('total_batch_size')} x {t.get('seq_len')} tokens = {tokens:,} "
            f"tokens; {t.get('scheduler')} schedule, warm-up {t.get('warmup_ratio')}, final lr "
            f"{t.get('min_lr_ratio')}x; validation on {t.get('eval_tokens'):,} held-out tokens; "
            f"{c.get('precision')} on CPU.")


def figures(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # two panels (GWT rows with AdamW; the other baselines with AdamW), one y-range: points far above
    # every method's best are drawn at the top edge (^) with their value, so they do not flatten the rest
    panels = (("GWT", [r for r in summary["methods"] if r["experiment"] in ("adamw", "haar2", "haar3", "db2_2")]),
              ("baselines", [r for r in summary["methods"] if r["experiment"] not in ("haar2", "haar3", "db2_2")]))
    done = [g["ppl"] for r in summary["methods"] for g in r["grid"] if g["ppl"] is not None]
    top = min(max(done), 1.6 * min(done)) if done else None
    colors = {r["experiment"]: f"C{i % 10}" for i, r in enumerate(summary["methods"])}  # one per method, both panels
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (title, rows) in zip(axes, panels):
        off_scale = {}  # lr -> off-scale labels drawn there so far (stacked, so two values never overlap)
        for row in rows:
            pts = [(g["lr"], g["ppl"]) for g in row["grid"] if g["ppl"] is not None]
            if not pts:
                continue
            shown = [(lr, min(ppl, top)) for lr, ppl in pts]
            (line,) = ax.plot(*zip(*shown), marker="o", ms=4, label=row["label"], color=colors[row["experiment"]])
            for (lr, ppl), (_, y) in zip(pts, shown):
                if ppl > top:
                    ax.plot([lr], [y], marker="^", ms=8, color=line.get_color(), ls="none")
                    k = off_scale[lr] = off_scale.get(lr, -1) + 1
                    ax.annotate(f"{ppl:.0f}", (lr, y), textcoords="offset points", xytext=(5, -11 - 9 * k),
                                fontsize=7, color=line.get_color())
            if row["mean_ppl"] is not None and row["bracketed"]:  # mean ± std of the seeds at the best lr
                ax.errorbar([row["best_lr"]], [row["mean_ppl"]], yerr=[row["std_ppl"] or 0.0], fmt="s", ms=6,
                            color=line.get_color(), capsize=3, mfc="white")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("final validation perplexity")
    fig.suptitle(f"Learning-rate sensitivity: seed {summary['seeds'][0]} (circles); squares: mean ± std of "
                 f"seeds {', '.join(map(str, summary['seeds']))} at the best lr", fontsize=10)
    fig.tight_layout()
    paths = [out / "lr_sensitivity.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [p for p in summary["level_series"]["points"] if p["ppl"] is not None]
    full = next((r for r in summary["methods"] if r["experiment"] == "adamw"), None)
    if points:
        ax.plot([p["level"] for p in points], [p["ppl"] for p in points], marker="o", label="GWT Haar (alpha 0.25)")
        adamw_bytes = full["optimizer_state_bytes"] if full else None
        for p in points:  # the state each level keeps, relative to AdamW's
            if adamw_bytes and p["optimizer_state_bytes"]:
                ax.annotate(f"{p['optimizer_state_bytes'] / adamw_bytes:.2f}x", (p["level"], p["ppl"]),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    if full and full["mean_ppl"] is not None:
        ax.axhline(full["mean_ppl"], color="gray", ls="--", label="Full-Rank (AdamW), best lr")
    ax.set_xlabel("Haar level (moments on 1/2^level of each matrix)")
    ax.set_ylabel("final validation perplexity")
    lr = summary["level_series"]["lr"]
    ax.set_title("Level series" + (f" at lr {lr:g}" if lr is not None else " (waits for Haar-2's best lr)"))
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no level runs yet", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    paths.append(out / "levels.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def run_study(study: Path, plan: Plan, draw: bool = True, project_readme: Path | None = None) -> dict:
    """Read ``study/runs``, write summary.json, README.md (and the figures) and, given
    ``project_readme``, the study's block in it; return the summary."""
    runs_dir = study / "runs"
    runs = load_runs(runs_dir) if runs_dir.is_dir() else []
    incomplete = sorted(p.relative_to(study).as_posix() for p in runs_dir.glob("*")
                        if p.is_dir() and not (p / "result.json").exists()) if runs_dir.is_dir() else []
    summary = summarize(runs, plan, incomplete)
    kept, _ = split_protocol([r for r in runs if _ppl(r) is not None])
    study.mkdir(parents=True, exist_ok=True)
    (study / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (study / "README.md").write_text(readme(summary, protocol_description(kept)))
    if draw:
        figures(summary, study)
    if project_readme is not None and not update_readme(project_readme, readme_block(summary)):
        print(f"{project_readme}: no {README_BEGIN!r} ... {README_END!r} markers; its block was not written")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise the reduced-scale Table 1 study from its runs.")
    parser.add_argument("--study", default=str(STUDY), help="study folder holding runs/ (default results/reduced_table1)")
    parser.add_argument("--no-figures", action="store_true", help="skip the two PNGs")
    parser.add_argument("--readme", default=None,
                        help="file whose reduced_table1 block is rewritten (default: the project's README.md "
                             "for the default study, none for another)")
    args = parser.parse_args(argv)
    study = Path(args.study)
    if study.exists() and not study.is_dir():
        parser.error(f"--study {study}: not a folder")
    readme_path = Path(args.readme) if args.readme else (REPO / "README.md" if study.resolve() == STUDY else None)
    summary = run_study(study, load_plan(), draw=not args.no_figures, project_readme=readme_path)
    print(f"wrote {study}/summary.json and README.md: {summary['runs_used']} runs, "
          f"{len(summary['missing'])} missing\n{summary['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
