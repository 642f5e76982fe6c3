"""A/B step time: this checkout's GWT optimizers against another git revision's, in one process.

The other revision's ``gwt`` package is exported with ``git archive`` into a temporary folder and
imported under another name, so both versions step the same matrices with the same gradients,
interleaved in a shuffled order each round, and the medians share the machine's noise. Each
optimizer is built with options both versions accept (lr, wavelet, level: the default backend).
Fused torch AdamW is timed alongside as the reference.

    python scripts/bench_ab.py --base 0f39ad0 --sizes 60m --rounds 20
    python scripts/bench_ab.py --base HEAD~5 --methods haar2 db2_2 --out results/optimizer/ab.md
"""
from __future__ import annotations

import argparse
import importlib
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_optimizer import SIZES, machine, target_shapes  # noqa: E402

#: method -> GWTAdamW options (level 0 = plain Adam on the same matrices: the level-0 kernel)
METHODS = {"haar1": dict(level=1), "haar2": dict(level=2), "haar7": dict(level=7),
           "db2_2": dict(wavelet="db2", level=2), "adam_level0": dict(level=0)}


def import_revision(rev: str, name: str, into: Path):
    """Import revision ``rev``'s ``gwt`` package as module ``name`` (sources under ``into``)."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "gwt"], check=True,
                              capture_output=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--base {rev!r}: git archive failed: {err.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    package = into / name
    (into / "gwt").rename(package)
    for path in package.rglob("*.py"):  # absolute imports of the package point at the renamed copy
        text = path.read_text()
        path.write_text(re.sub(r"\b(from|import) gwt(\.|\b)", rf"\1 {name}\2", text))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. a commit or HEAD~3)")
    parser.add_argument("--sizes", nargs="+", default=["60m"], choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error(f"--rounds={args.rounds}, --warmup={args.warmup}: valid: rounds >= 1, warmup >= 0")
    import gwt as new

    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.base, "gwt_ab_base", Path(tmp))
        lines = [f"Machine: {machine(torch.device('cpu'))}",
                 f"Command: `python scripts/bench_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
                 f"Median of {args.rounds} interleaved steps after {args.warmup} warm-up rounds; base = "
                 f"`{args.base}`, new = this checkout.", "",
                 "| size | method | base ms | new ms | new / base | fused AdamW ms |", "|---|---|---:|---:|---:|---:|"]
        for size in args.sizes:
            torch.manual_seed(0)
            shapes = target_shapes(size)
            grads = [torch.randn(s) * 1e-3 for s in shapes]

            def fresh():
                ps = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)) * 0.02)
                      for i, s in enumerate(shapes)]
                for p, g in zip(ps, grads):
                    p.grad = g.clone()
                return ps

            runners = {("fused", "adamw"): torch.optim.AdamW(fresh(), lr=1e-3, fused=True)}
            for m in args.methods:
                for tag, lib in (("base", old), ("new", new)):
                    runners[(tag, m)] = lib.GWTAdamW(fresh(), lr=1e-3, **METHODS[m])
            times = {k: [] for k in runners}
            order = list(runners)
            for r in range(args.warmup + args.rounds):
                random.Random(r).shuffle(order)
                for key in order:
                    start = time.perf_counter()
                    runners[key].step()
                    if r >= args.warmup:
                        times[key].append(time.perf_counter() - start)
                print(f"{size}: round {r + 1}/{args.warmup + args.rounds}", file=sys.stderr)
            fused = statistics.median(times[("fused", "adamw")]) * 1e3
            for m in args.methods:
                b, n = (statistics.median(times[(tag, m)]) * 1e3 for tag in ("base", "new"))
                lines.append(f"| {size} | {m} | {b:.2f} | {n:.2f} | {n / b:.3f} | {fused:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
