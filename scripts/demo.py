"""The main job (`make demo`): GWT and AdamW pre-train the same small LLaMA side by side on the same
local C4 tokens, then a table (validation perplexity, optimizer-state memory, tokens/s) and a PNG of
both loss curves.

Each run is ``train_llama.py experiment=demo`` (the single-run form) with the optimizer and the
settings below as overrides; its folder holds config.yaml, metrics.jsonl and result.json.

    python scripts/demo.py                       # a few minutes on 2 CPU cores
    python scripts/demo.py --steps 50 --out /tmp/demo
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gwt_lab.jsonl import read_jsonl  # noqa: E402

#: (label, optimizer config) of the compared runs; both use the optimizer YAMLs' paper learning rates.
RUNS = (("GWT Haar-2", "gwt"), ("AdamW", "adamw"))
#: Output vocabulary of the demo model: T5 ids >= this become UNK. A 4096-wide output layer keeps a
#: step cheap on a CPU while the text stays real; an untrained model starts at perplexity ~4096.
VOCAB_SIZE = 4096
STEPS = 200


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps per run (default {STEPS})")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE,
                   help=f"model.vocab_size of both runs (default {VOCAB_SIZE})")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for both runs, the table and the plot (default outputs/demo/<time>)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs, e.g. data=imdb_local")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps={args.steps} must be at least 2")
    if args.vocab_size < 260:  # byte fallback + specials of the T5 vocabulary need the first ids
        p.error(f"--vocab-size={args.vocab_size} must be at least 260")
    if args.out is None:
        args.out = ROOT / "outputs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out={str(args.out)!r} exists and is not empty; choose a new folder")
    return args


def run_overrides(optimizer: str, out: Path, args: argparse.Namespace) -> list[str]:
    return ["experiment=demo", f"optimizer={optimizer}", f"model.vocab_size={args.vocab_size}",
            f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}",
            f"trainer.checkpoint_every={args.steps}", "logger=none", f"run_name=demo-{optimizer}",
            f"output_dir={out}", *args.overrides]


def matrix_state_bytes(config: dict) -> int:
    """Optimizer-state bytes of the attention/MLP matrices alone (the part GWT compresses), from
    the run's model and optimizer settings (gwt.memory.estimate_state_bytes; equal to the measured
    bytes, as tested). The embedding and output layer keep full Adam moments under both optimizers."""
    import torch

    from gwt.memory import estimate_state_bytes
    from gwt_lab.models import build_causal_lm

    with torch.device("meta"):
        model = build_causal_lm(config["model"])
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()
              if p.dim() == 2 and ("attn" in n or "mlp" in n)}
    opt = config["optimizer"]
    if opt["name"] == "gwt":
        return estimate_state_bytes(shapes, "gwt", wavelet=opt["wavelet"], level=opt["level"],
                                    boundary=opt["boundary"], limiter=opt["limiter"])
    return estimate_state_bytes(shapes, "adamw")


def summarize(label: str, run_dir: Path) -> dict:
    """The table row of one finished run, from its result.json and metrics.jsonl."""
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    return {"label": label, "dir": run_dir, "steps": [r["step"] for r in train], "losses": [r["loss"] for r in train],
            "first_ppl": math.exp(train[0]["loss"]), "eval_ppl": m["eval_ppl"],
            "state_mib": m["optimizer_state_bytes"] / 2**20, "tokens_per_s": m["train_tokens_per_s"],
            "matrix_kib": matrix_state_bytes(result["config"]) / 2**10,
            "setup": f"{result['config']['model']['name']} on {result['config']['data']['name']}"}


def table(rows: list[dict]) -> str:
    head = ("optimizer", "train ppl at step 1", "validation ppl", "optimizer state (all)",
            "of it attention/MLP", "tokens/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['first_ppl']:,.0f} | {r['eval_ppl']:,.1f} | {r['state_mib']:.2f} MiB "
                     f"| {r['matrix_kib']:,.0f} KiB | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in rows:
        ax.plot(r["steps"], r["losses"], label=f"{r['label']} (val ppl {r['eval_ppl']:.0f})", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"{rows[0]['setup']}: " + " vs ".join(r["label"] for r in rows))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = []
    for i, (label, optimizer) in enumerate(RUNS, 1):
        run_dir = args.out / optimizer
        print(f"[{i}/{len(RUNS)}] {label}: train_llama.py experiment=demo optimizer={optimizer} -> {run_dir}",
              flush=True)
        cmd = [sys.executable, str(ROOT / "train_llama.py"), *run_overrides(optimizer, run_dir, args)]
        code = subprocess.call(cmd, cwd=ROOT)
        if code != 0:
            print(f"error: the {label} run failed (exit status {code}); its output is above", file=sys.stderr)
            return code
        rows.append(summarize(label, run_dir))
    png = args.out / "loss_curves.png"
    plot(rows, png)
    text = table(rows)
    (args.out / "summary.md").write_text(text + "\n")
    print(f"\n{text}\n")
    print(f"{args.steps} steps each, {args.vocab_size}-id vocabulary, same tokens in the same order; "
          f"wall time {time.time() - start:.0f} s")
    print(f"loss curves: {png}")
    print(f"table:       {args.out / 'summary.md'}")
    for r in rows:
        print(f"{r['label']:<12} {r['dir'] / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
