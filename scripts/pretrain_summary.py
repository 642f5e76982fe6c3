"""Markdown tables of the CPU pre-training measurements in results/pretrain/ (from the runs' own
result.json and metrics.jsonl; nothing is typed in by hand).

    python scripts/pretrain_summary.py            # print the tables
    python scripts/pretrain_summary.py --write    # also write results/pretrain/README.md

The runs are made by scripts/run_pretrain_cpu.sh (throughput | imdb).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gwt_lab.results import load_runs  # noqa: E402

STUDIES = {
    "throughput_llama20m": ("CPU throughput and memory: llama_20m, AdamW vs GWT Haar-2",
                            "scripts/run_pretrain_cpu.sh throughput",
                            "Both runs went side by side, one thread each. Peak RSS is the whole process (torch, "
                            "transformers, datasets, tokenizer included); the optimizer-state column is the measured "
                            "bytes of the state tensors (`gwt.memory.optimizer_state_bytes`). In llama_20m the two "
                            "embedding matrices (16.4M of 19.5M parameters) get plain Adam under every method."),
    "imdb": ("IMDb corpus, small LLaMA, same token budget: final validation perplexity",
             "scripts/run_pretrain_cpu.sh imdb",
             "Each run was started as `scripts/run_pretrain_cpu.sh imdb <name>`; the four ran at the same time, "
             "one thread each, so tokens/s is shared-machine throughput."),
}
ORDER = ("Full-Rank", "Haar-2", "DB2-2", "GaLore-1/4")


def load(study_dir: Path) -> list[dict]:
    runs = []
    for run in load_runs(study_dir):
        lines = run.curve()
        runs.append({"dir": study_dir / run.path, "label": run.method, "result": {"metrics": run.metrics, "git_commit": run.git_commit, **run.extra},
                     "cfg": run.config, "train": [x for x in lines if "loss" in x],
                     "eval": [x for x in lines if "eval_loss" in x]})
    return sorted(runs, key=lambda r: ORDER.index(r["label"]) if r["label"] in ORDER else len(ORDER))


def steady_tokens_per_s(train: list[dict], skip: int = 5) -> float:
    """Median per-step throughput after the first ``skip`` steps (compilation, warm caches)."""
    values = [x["tokens_per_s"] for x in train[skip:]] or [x["tokens_per_s"] for x in train]
    return statistics.median(values)


def throughput_table(runs: list[dict]) -> str:
    rows = ["| optimizer | steps | tokens | tokens/s (whole run) | tokens/s (median step after 5) | peak RSS (GiB) "
            "| optimizer state (MiB) | eval loss |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["result"]["metrics"]
        rows.append(f"| {r['label']} | {m['steps']} | {m['tokens_seen']:,} | {m['train_tokens_per_s']:.0f} | "
                    f"{steady_tokens_per_s(r['train']):.0f} | {m['peak_memory_bytes'] / 2**30:.2f} | "
                    f"{m['optimizer_state_bytes'] / 2**20:.1f} | {m['eval_loss']:.3f} |")
    return "\n".join(rows)


def imdb_table(runs: list[dict]) -> str:
    steps = sorted({x["step"] for r in runs for x in r["eval"]})
    head = "| optimizer | lr | tokens | " + " | ".join(f"val ppl @{s}" for s in steps) + \
           " | final val loss | optimizer state (MiB) | tokens/s | train time (min) |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        m = r["result"]["metrics"]
        by_step = {x["step"]: x["eval_ppl"] for x in r["eval"]}
        cells = " | ".join(f"{by_step[s]:.1f}" if s in by_step else "—" for s in steps)
        rows.append(f"| {r['label']} | {r['cfg']['optimizer']['lr']:g} | {m['tokens_seen']:,} | {cells} | "
                    f"{m['eval_loss']:.4f} | {m['optimizer_state_bytes'] / 2**20:.2f} | "
                    f"{m['train_tokens_per_s']:.0f} | {m['train_time_s'] / 60:.1f} |")
    return "\n".join(rows)


def setup_line(cfg: dict) -> str:
    """The shared setting of a study, read from its first run's resolved config."""
    m, t, d = cfg["model"], cfg["trainer"], cfg["data"]
    return (f"Setting: {m['name']} (hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, vocabulary "
            f"{m['vocab_size']}), data `{d['name']}` ({'packed' if d['pack'] else 'truncated/padded'} "
            f"{t['seq_len']}-token sequences), {t['total_batch_size']} sequences per step, {t['max_steps']} steps, "
            f"warm-up {t['warmup_ratio']:g} of the steps then {t['scheduler']} to {t['min_lr_ratio']:g}x, "
            f"precision {cfg['precision']}, seed {cfg['seed']}; evaluation on {t['eval_tokens']:,} validation tokens.")


def provenance(runs: list[dict]) -> str:
    lines = []
    for r in runs:
        res = r["result"]
        mach = res.get("machine", {})
        where = r["dir"].resolve()
        where = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        lines.append(f"- `{where.as_posix()}`: {r['label']}, commit "
                     f"{str(res.get('git_commit'))[:10]}{' (uncommitted changes)' if res.get('git_dirty') else ''}, "
                     f"{mach.get('cpu_count')} CPU cores, torch {mach.get('torch')}, finished {res.get('finished_at')}")
    return "\n".join(lines)


def render(root: Path) -> str:
    parts = ["# CPU pre-training measurements", "",
             "Generated by `python scripts/pretrain_summary.py --write` from the run folders below "
             "(each holds `config.yaml`, `metrics.jsonl`, `result.json`). Machine: the project's development "
             "VM, 2 cores of an AMD EPYC (Zen, AVX2, no bf16 units), 23 GiB RAM, shared with other jobs "
             "while these ran, so throughput numbers are indicative (compare within a table).", ""]
    for name, (title, command, note) in STUDIES.items():
        runs = load(root / name)
        if not runs:
            continue
        table = throughput_table(runs) if name.startswith("throughput") else imdb_table(runs)
        parts += [f"## {title}", "", f"Command: `{command}` then `python scripts/pretrain_summary.py --write`.", "",
                  setup_line(runs[0]["cfg"]), "", table, "", note, "", "Runs:", provenance(runs), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "results" / "pretrain")
    parser.add_argument("--write", action="store_true", help="write <root>/README.md")
    args = parser.parse_args()
    text = render(args.root)
    print(text)
    if args.write:
        (args.root / "README.md").write_text(text)


if __name__ == "__main__":
    main()
