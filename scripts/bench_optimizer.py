"""Benchmark: optimizer step time and state bytes on the GWT-target matrices of LLaMA models.

For each model size the parameters are the q/k/v/o/gate/up/down weights of every block (what
GWT compresses in the paper's pre-training). All optimizers share one set of parameters and
fixed random gradients; each keeps its own state. Steps are timed interleaved (one step of each
method per round, in a shuffled order) and the median over the rounds is reported.

GaLore/APOLLO/Fira refresh their projection every ``--proj-gap`` steps (200, as in the paper):
the refresh step is timed separately (a twin optimizer with gap 1) and amortised:
``t = t_plain + (t_refresh - t_plain) / gap``.

    python scripts/bench_optimizer.py                       # CPU, 60m and 130m
    python scripts/bench_optimizer.py --device cuda --out results/bench_optimizer_h100.md
    python scripts/bench_optimizer.py --sizes 60m --rounds 10 --methods adamw_fused gwt_haar2@cpu gwt_haar2@torch

GWT-AdamW methods are named ``gwt_haar<level>@<backend>`` and ``gwt_db2_<level>@<backend>`` for
every backend that runs on the device (``cpu``, ``torch``, ``compile`` on the CPU; ``triton``,
``compile``, ``torch`` on CUDA; see the ``backend`` option of GWTAdamW). On CUDA,
``...@triton+graph`` (GWTAdamW with ``capturable=True``) and ``adamw_fused@graph`` (torch's fused
AdamW with ``capturable=True``) replay one CUDA graph of the step: the first warm-up round steps
eagerly, the second captures (so these need ``--warmup 2`` or more), and the timed rounds replay.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gwt import GWTAdamW  # noqa: E402
from gwt.memory import optimizer_state_bytes  # noqa: E402

# hidden, intermediate, layers (docs: ../shared/paper/tableA1_A2_protocol.csv)
SIZES = {"20m": (256, 688, 4), "60m": (512, 1376, 8), "130m": (768, 2048, 12), "350m": (1024, 2736, 24)}


def target_shapes(size: str) -> list[tuple[int, int]]:
    hidden, inter, layers = SIZES[size]
    per_layer = [(hidden, hidden)] * 4 + [(inter, hidden)] * 2 + [(hidden, inter)]
    return per_layer * layers


def available_backends(device: torch.device) -> list[str]:
    """The GWTAdamW backends that can step tensors on ``device`` here."""
    from gwt.optim import cpu_kernel
    from gwt.optim.adamw import triton_available

    if device.type == "cpu":
        return (["cpu"] if cpu_kernel.library() is not None else []) + ["torch", "compile"]
    return (["triton"] if triton_available() else []) + ["compile", "torch"]


class GraphedStep:
    """An optimizer whose ``step()`` replays one CUDA graph of its own step: the first call steps
    eagerly (kernels built, address tables cached), the second captures and replays."""

    def __init__(self, opt):
        self.opt, self.graph, self.calls = opt, None, 0

    def step(self):
        self.calls += 1
        if self.calls == 1:
            return self.opt.step()
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # recorded, not run
                self.opt.step()
        self.graph.replay()


def method_builders(hidden: int, gap: int, backends: list[str]) -> dict:
    rank = hidden // 4

    def low_rank(module: str, cls: str, **keys):
        def build(params, refresh_every=gap):
            import importlib

            opt_cls = getattr(importlib.import_module(module), cls)
            group = dict(params=params, rank=rank, update_proj_gap=refresh_every, proj_type="std", **keys)
            return opt_cls([group], lr=1e-3)

        return build

    builders = {
        "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    }
    # GWT-AdamW through every backend that runs on the device, side by side (method@backend);
    # for wavelets other than Haar, torch and compile both run ptwt's transform: one entry.
    graphs = "triton" in backends  # CUDA with triton: the captured variants too
    if graphs:
        builders["adamw_fused@graph"] = lambda ps: GraphedStep(torch.optim.AdamW(ps, lr=1e-3, fused=True,
                                                                                 capturable=True))
    for level in range(1, 8):
        for backend in backends:
            builders[f"gwt_haar{level}@{backend}"] = lambda ps, lv=level, b=backend: GWTAdamW(
                ps, lr=1e-3, level=lv, backend=b)
        if graphs:
            builders[f"gwt_haar{level}@triton+graph"] = lambda ps, lv=level: GraphedStep(GWTAdamW(
                ps, lr=1e-3, level=lv, backend="triton", capturable=True))
    for level in range(1, 4):
        for backend in (b for b in backends if b != "compile"):
            builders[f"gwt_db2_{level}@{backend}"] = lambda ps, lv=level, b=backend: GWTAdamW(
                ps, lr=1e-3, wavelet="db2", level=lv, backend=b)
        if graphs:
            builders[f"gwt_db2_{level}@triton+graph"] = lambda ps, lv=level: GraphedStep(GWTAdamW(
                ps, lr=1e-3, wavelet="db2", level=lv, backend="triton", capturable=True))
    builders["galore"] = low_rank("galore_torch", "GaLoreAdamW", scale=0.25)
    builders["apollo"] = low_rank("apollo_torch", "APOLLOAdamW", scale=1.0, scale_type="channel", proj="random")
    builders["fira"] = low_rank("fira", "FiraAdamW", alpha=0.25)
    return builders


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_size(size: str, device: torch.device, methods: list[str], rounds: int, warmup: int, gap: int):
    torch.manual_seed(0)
    shapes = target_shapes(size)
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    builders = method_builders(SIZES[size][0], gap, available_backends(device))
    opts, refresh, failed = {}, {}, {}
    for name in methods:
        build = builders[name]
        try:
            opts[name] = build(params)
            if name in ("galore", "apollo", "fira"):
                refresh[name] = build(params, refresh_every=1)
        except Exception as err:  # one method that cannot run here does not cost the others' numbers
            failed[name] = f"{type(err).__name__}: {err}"
            opts.pop(name, None)
    timings = {name: [] for name in [*opts, *(f"{n}@refresh" for n in refresh)]}
    runners = {**opts, **{f"{n}@refresh": o for n, o in refresh.items()}}
    order = list(runners)
    for r in range(warmup + rounds):
        random.Random(r).shuffle(order)
        for name in list(order):
            sync(device)
            start = time.perf_counter()
            try:
                runners[name].step()
                sync(device)
            except Exception as err:
                base = name.removesuffix("@refresh")
                failed[base] = f"{type(err).__name__}: {err}"
                order = [n for n in order if n.removesuffix("@refresh") != base]
                continue
            if r >= warmup:
                timings[name].append(time.perf_counter() - start)
    for name, error in failed.items():
        print(f"{size} {name}: failed, left out ({error.splitlines()[0][:300]})", file=sys.stderr)
        opts.pop(name, None)
    rows = [dict(size=size, method=name, step_ms=None, state_mb=None, vs_fused=None, error=error,
                 params_m=sum(p.numel() for p in params) / 1e6) for name, error in failed.items()]
    fused = statistics.median(timings["adamw_fused"]) if timings.get("adamw_fused") else None
    for name, opt in opts.items():
        t = statistics.median(timings[name])
        if name in refresh:
            t = t + (statistics.median(timings[f"{name}@refresh"]) - t) / gap
        state = optimizer_state_bytes(getattr(opt, "opt", opt))
        rows.append(dict(size=size, method=name, step_ms=t * 1e3, state_mb=state / 2**20,
                         vs_fused=t / fused if fused else None,
                         params_m=sum(p.numel() for p in params) / 1e6))
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:  # the model name where Linux tells it
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {name} ({os.cpu_count()} cores), {torch.get_num_threads()} threads (torch {torch.__version__})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["60m", "130m"], choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--proj-gap", type=int, default=200)
    parser.add_argument("--out", default=None, help="Markdown file to write (a .json twin is written beside it)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    valid = list(method_builders(512, args.proj_gap, available_backends(device)))
    methods = args.methods or valid
    for name in methods:
        if name not in valid:
            parser.error(f"--methods: {name!r} is unknown; valid: {', '.join(valid)}")
    if args.rounds < 1 or args.warmup < 0:
        parser.error(f"--rounds={args.rounds}, --warmup={args.warmup}: valid: rounds >= 1 (10 or more for a "
                     "reliable median), warmup >= 0")
    graphed = [name for name in methods if name.endswith("graph")]
    if graphed and args.warmup < 2:
        parser.error(f"--warmup={args.warmup} with {graphed[0]}: valid: 2 or more (one eager step, one capture)")
    rows = []
    for size in args.sizes:
        rows += bench_size(size, device, methods, args.rounds, args.warmup, args.proj_gap)
        print(f"done {size}", file=sys.stderr)
    command = "python scripts/bench_optimizer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Machine: {machine(device)}", f"Command: `{command.strip()}`",
             f"Median of {args.rounds} interleaved steps after {args.warmup} warm-up rounds; "
             f"projection refresh amortised over {args.proj_gap} steps"
             + (" (fewer than 10 rounds: a smoke run, not a measurement)." if args.rounds < 10 else "."), "",
             "| size | method | step ms | x fused AdamW | state MiB |", "|---|---|---:|---:|---:|"]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['size']} ({row['params_m']:.1f}M target params) | {row['method']} | failed: "
                         f"{row['error'].splitlines()[0][:120]} | — | — |")
            continue
        ratio = f"{row['vs_fused']:.2f}" if row["vs_fused"] is not None else "—"
        lines.append(f"| {row['size']} ({row['params_m']:.1f}M target params) | {row['method']} | "
                     f"{row['step_ms']:.2f} | {ratio} | {row['state_mb']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(dict(machine=machine(device), command=command, rows=rows),
                                                       indent=1))


if __name__ == "__main__":
    main()
