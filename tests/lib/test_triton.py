"""The Triton kernels of gwt.optim.triton_kernels against a float64 reference written from
docs/update_rule.md with pywt's own multi-level transform (wavedec/waverec, mode ``zero``).

CPU: Triton's interpreter must be switched on (TRITON_INTERPRET=1) before triton is first
imported, and other tests import it earlier through torch; so the CPU cases run together in one
child process started with that variable (``python tests/lib/test_triton.py CASE...``), which
returns each case's errors as JSON, and no other test sees the variable. CUDA: the same cases run
compiled in this process (marker ``gpu``).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch

ROOT = Path(__file__).resolve().parents[2]
LR, WD, BETAS, EPS, ALPHA = 1e-2, 0.1, (0.9, 0.999), 1e-6, 0.25

# name -> (wavelet, level (0: plain Adam), row length, limiter gamma, param dtype, state dtype, tolerance:
# relative error for fp32 parameters, bf16 spacings for bf16 parameters)
CASES = {
    "haar1-div-lim": ("haar", 1, 32, 1.01, "float32", "float32", 2e-5),
    "haar2-odd": ("haar", 2, 37, None, "float32", "float32", 2e-5),
    "haar3-div-lim": ("haar", 3, 40, 1.01, "float32", "float32", 2e-5),
    "haar4-odd-lim": ("haar", 4, 37, 1.01, "float32", "float32", 2e-5),
    "haar4-div": ("haar", 4, 64, None, "float32", "float32", 2e-5),
    "db2-1-div-lim": ("db2", 1, 32, 1.01, "float32", "float32", 2e-5),
    "db2-2-odd": ("db2", 2, 37, None, "float32", "float32", 2e-5),
    "db2-3-div-lim": ("db2", 3, 40, 1.01, "float32", "float32", 2e-5),
    "db2-4-odd-lim": ("db2", 4, 37, 1.01, "float32", "float32", 2e-5),
    "sym4-2-odd-lim": ("sym4", 2, 45, 1.01, "float32", "float32", 2e-5),
    # small tiles: rows split over several Haar programs, several passes of the transform loops
    "haar1-odd-lim-tiles": ("haar", 1, 37, 1.01, "float32", "float32", 2e-5),
    "db2-2-odd-lim-tiles": ("db2", 2, 45, 1.01, "float32", "float32", 2e-5),
    "haar2-bf16": ("haar", 2, 29, 1.01, "bfloat16", "float32", 1),
    "db2-2-bf16": ("db2", 2, 29, 1.01, "bfloat16", "float32", 1),
    "adam-bf16": ("haar", 0, 29, None, "bfloat16", "float32", 1),
    "adam-fp32": ("haar", 0, 29, None, "float32", "float32", 2e-5),
    "haar2-bf16-states": ("haar", 2, 24, 1.01, "float32", "bfloat16", 3e-2),
    "db2-2-bf16-states": ("db2", 2, 24, 1.01, "float32", "bfloat16", 3e-2),
}


def reference_step(w, g, m, v, prev, t, wavelet, level, gamma):
    """One GWT-AdamW step in float64 (numpy), as docs/update_rule.md states it; returns (w, m, v, prev)."""
    b1, b2 = BETAS
    n = w.shape[-1]
    coeffs = pywt.wavedec(g, wavelet, mode="zero", level=level, axis=-1) if level else [g]
    a = coeffs[0]
    m = b1 * m + (1 - b1) * a
    v = b2 * v + (1 - b2) * a * a
    denom = np.sqrt(v) + EPS
    normalized = m / denom
    if level == 0:
        update = normalized
    else:
        lam = 1.0
        if gamma is not None:
            norm = np.linalg.norm(normalized)
            lam = max(norm / (prev + 1e-8), gamma) / gamma
            prev = norm / lam
        # D_l, ..., D_1 divided by denom * lam repeated 1, 2, 4, ... times, cut to their lengths
        details = [d / np.repeat(denom * lam, 2**i, axis=-1)[..., :d.shape[-1]] for i, d in enumerate(coeffs[1:])]
        update = ALPHA * pywt.waverec([normalized / lam, *details], wavelet, mode="zero", axis=-1)[..., :n]
    w = w - LR * math.sqrt(1 - b2**t) / (1 - b1**t) * update
    return w - LR * WD * w, m, v, prev


def measure(device: str, name: str, rows: int = 2, count: int = 2, steps: int = 3) -> dict:
    """Run case ``name``: ``steps`` steps of ``count`` same-shape (rows, n) matrices, one kernel call
    per step, next to the fp64 reference fed the same (dtype-rounded) gradients. Returns the worst
    relative errors over the matrices: parameters (relative to the distance moved; for bf16
    parameters the largest step-wise distance in bf16 spacings), both moments, the limiter's
    stored norm; and the dtypes the tensors kept."""
    from gwt.optim import triton_kernels as tk

    if name.endswith("-tiles"):
        saved = tk.HAAR_TILE, tk.DWT_TILE
        tk.HAAR_TILE, tk.DWT_TILE = 8, 16
        try:
            return _measure(tk, device, name, rows, count, steps)
        finally:
            tk.HAAR_TILE, tk.DWT_TILE = saved
    return _measure(tk, device, name, rows, count, steps)


def _measure(tk, device: str, name: str, rows: int, count: int, steps: int) -> dict:
    wavelet, level, n, gamma, pdt, sdt, _ = CASES[name]
    param_dtype, state_dtype = getattr(torch, pdt), getattr(torch, sdt)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    shape = (rows, n)
    w0 = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(count)]
    params = [w.to(device, param_dtype) for w in w0]
    refs = [w.to(param_dtype).double().numpy() for w in w0]
    k = n if level == 0 else pywt.wavedec(np.zeros(n), wavelet, mode="zero", level=level)[0].size
    ms = [torch.zeros(rows, k, dtype=state_dtype, device=device) for _ in range(count)]
    vs = [torch.zeros_like(m) for m in ms]
    prevs = [torch.full((), math.inf, device=device) for _ in range(count)] if gamma is not None else None
    ref_state = [[np.zeros((rows, k)), np.zeros((rows, k)), math.inf] for _ in range(count)]
    b1, b2 = BETAS
    ulps = 0.0
    for t in range(1, steps + 1):
        grads = [(torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + t)).to(param_dtype)
                 for _ in range(count)]
        step_size = torch.tensor(LR * math.sqrt(1 - b2**t) / (1 - b1**t), dtype=torch.float32, device=device)
        decay = torch.tensor(LR * WD, dtype=torch.float32, device=device)
        dev_grads = [g.to(device) for g in grads]
        before = [p.double().cpu().numpy() for p in params]
        if level == 0:
            tk.adam_group(params, dev_grads, ms, vs, beta1=b1, beta2=b2, eps=EPS, step_size=step_size, decay=decay)
        elif wavelet == "haar":
            tk.haar_group(params, dev_grads, ms, vs, prevs, level=level, beta1=b1, beta2=b2, eps=EPS, alpha=ALPHA,
                          gamma=gamma, step_size=step_size, decay=decay)
        else:
            tk.dwt_group(params, dev_grads, ms, vs, prevs, wavelet=wavelet, level=level, beta1=b1, beta2=b2, eps=EPS,
                         alpha=ALPHA, gamma=gamma, step_size=step_size, decay=decay)
        for i, g in enumerate(grads):
            if param_dtype == torch.float32:  # one fp64 run from the start
                w, m, v, prev = reference_step(refs[i], g.double().numpy(), *ref_state[i], t, wavelet, level, gamma)
            else:
                # bf16 parameters: this step in fp64 from the kernel's own previous parameter, rounded to
                # bf16; the two may differ by one bf16 spacing where fp32 and fp64 round differently
                w, m, v, prev = reference_step(before[i], g.double().numpy(), *ref_state[i], t, wavelet, level, gamma)
                w = torch.from_numpy(w).to(param_dtype).double().numpy()
                got = params[i].double().cpu().numpy()
                spacing = np.exp2(np.floor(np.log2(np.maximum(np.abs(w), np.abs(before[i])) + 1e-30)) - 7)
                ulps = max(ulps, float((np.abs(got - w) / spacing).max()))
            refs[i], ref_state[i] = w, [m, v, prev]

    def rel(got, want):
        return float(np.abs(got.detach().double().cpu().numpy() - want).max() / np.abs(want).max())

    out = {"param": 0.0, "param_ulps": ulps, "exp_avg": 0.0, "exp_avg_sq": 0.0, "prev_norm": 0.0,
           "dtypes": sorted({str(t.dtype) for t in params} | {str(t.dtype) for t in ms + vs})}
    for i in range(count):
        out["param"] = max(out["param"], float(np.linalg.norm(params[i].double().cpu().numpy() - refs[i])
                                               / np.linalg.norm(refs[i] - w0[i].numpy())))
        out["exp_avg"] = max(out["exp_avg"], rel(ms[i], ref_state[i][0]))
        out["exp_avg_sq"] = max(out["exp_avg_sq"], rel(vs[i], ref_state[i][1]))
        if prevs is not None:
            out["prev_norm"] = max(out["prev_norm"], abs(prevs[i].item() - ref_state[i][2]) / ref_state[i][2])
    return out


OPTIMIZER_CASE = "GWTAdamW-backend-triton"


def optimizer_case(device: str, steps: int = 3) -> dict:
    """GWTAdamW(backend="triton") on a Haar group (two shapes), a db2 group and a level-0 group
    next to GWTAdamW(backend="torch") on fp64 copies: the largest parameter error relative to the
    distance moved, and how often each kernel entry point ran."""
    from gwt.optim import triton_kernels as tk

    calls = {"haar_group": 0, "dwt_group": 0, "adam_group": 0}
    originals = {name: getattr(tk, name) for name in calls}
    try:
        return _optimizer_case(tk, calls, device, steps)
    finally:  # later cases in the same process see the kernels themselves
        for name, fn in originals.items():
            setattr(tk, name, fn)


def _optimizer_case(tk, calls: dict, device: str, steps: int) -> dict:
    from gwt import GWTAdamW

    for name in calls:
        def counted(*args, _fn=getattr(tk, name), _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        setattr(tk, name, counted)
    gen = torch.Generator().manual_seed(7)
    shapes = [[(6, 40), (6, 40), (6, 37)], [(4, 30)], [(10,)]]
    w0 = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in group] for group in shapes]
    keys = [dict(level=2), dict(wavelet="db2", level=2), dict(level=0)]
    runs = {}
    for backend, dtype, dev in (("triton", torch.float32, device), ("torch", torch.float64, "cpu")):
        params = [[torch.nn.Parameter(w.to(dev, dtype, copy=True)) for w in group] for group in w0]
        opt = GWTAdamW([dict(params=ps, **k) for ps, k in zip(params, keys)], lr=LR, weight_decay=WD, backend=backend)
        step_gen = torch.Generator().manual_seed(8)
        for _ in range(steps):
            for p in (p for group in params for p in group):
                p.grad = torch.randn(p.shape, generator=step_gen, dtype=torch.float64).to(dev, dtype)
            opt.step()
        runs[backend] = [p.detach().double().cpu() for group in params for p in group]
    start = [w for group in w0 for w in group]
    err = max(float((a - b).norm() / (b - w).norm()) for a, b, w in zip(runs["triton"], runs["torch"], start))
    return {"param": err, "calls": dict(calls)}


CAPTURABLE_CASE = "GWTAdamW-capturable"


def capturable_case(device: str, steps: int = 4, graph: bool = False) -> dict:
    """GWTAdamW(capturable=True) next to capturable=False, both on the triton backend: a Haar group
    (two same-shape matrices), a db2 group and a level-0 group, a tensor lr that LambdaLR changes
    every step, one matrix without a gradient at step 2 (so step counts differ within a batch), and
    a state-dict round trip halfway. ``graph``: the capturable steps replay one CUDA graph."""
    import copy

    from gwt import GWTAdamW

    gen = torch.Generator().manual_seed(1)
    shapes = [[(6, 40), (6, 40)], [(4, 30)], [(10,)]]
    w0 = [[torch.randn(s, generator=gen) for s in group] for group in shapes]
    keys = [dict(level=2), dict(wavelet="db2", level=2), dict(level=0)]
    grads = [[torch.randn(s, generator=gen) for group in shapes for s in group] for _ in range(steps)]
    grads[1][1] = None
    out = {}
    for capturable in (False, True):
        params = [[torch.nn.Parameter(w.to(device, copy=True)) for w in group] for group in w0]
        flat = [p for group in params for p in group]

        def build():
            lr = torch.tensor(LR, dtype=torch.float64, device=device) if capturable else LR
            opt = GWTAdamW([dict(params=ps, **k) for ps, k in zip(params, keys)], lr=lr, weight_decay=WD,
                           backend="triton", capturable=capturable)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

        opt, sched = build()
        static = [torch.zeros_like(p) for p in flat]
        step_graph = None
        for s in range(steps):
            if s == steps // 2:  # a state-dict round trip through the host, into a new optimizer
                saved = copy.deepcopy({k: v for k, v in opt.state_dict().items()})
                saved = torch.utils._pytree.tree_map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, saved)
                sched_saved = sched.state_dict()
                opt, sched = build()
                opt.load_state_dict(saved)
                sched.load_state_dict(sched_saved)
            # the loaded optimizer's first step runs eagerly on the static gradient buffers (address
            # tables built outside the capture); the later steps replay the graph captured after it
            static_grads = graph and capturable and s >= steps // 2
            replay = static_grads and s > steps // 2
            for p, g, buf in zip(flat, grads[s], static):
                if g is None:
                    p.grad = None
                elif static_grads:
                    buf.copy_(g.to(device))  # the graph reads the gradients it was captured with
                    p.grad = buf
                else:
                    p.grad = g.to(device, copy=True)
            if replay:
                if step_graph is None:  # capturing records the step without running it
                    step_graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(step_graph):
                        opt.step()
                step_graph.replay()
            else:
                opt.step()
            sched.step()
        state = opt.state[flat[1]]
        out[capturable] = dict(params=[p.detach().double().cpu() for p in flat],
                               step_device=str(state["step"].device), step=float(state["step"]),
                               copy=copy.deepcopy(opt).capturable)
    start = [w.double() for group in w0 for w in group]
    err = max(float((a - b).norm() / (b - w).norm())
              for a, b, w in zip(out[True]["params"], out[False]["params"], start))
    return {"param": err, "step_device": out[True]["step_device"], "step": out[True]["step"],
            "copy_capturable": out[True]["copy"]}


def check(name: str, result: dict) -> None:
    assert "error" not in result, result.get("error")
    *_, pdt, sdt, tol = CASES[name]
    assert result["dtypes"] == sorted({f"torch.{pdt}", f"torch.{sdt}"}), result["dtypes"]
    if pdt == "float32":
        assert result["param"] < tol, result
    else:
        assert result["param_ulps"] <= tol, result
    assert result["exp_avg"] < max(tol, 1e-5) and result["exp_avg_sq"] < max(tol, 1e-5), result
    assert result["prev_norm"] < max(tol, 1e-5), result


@pytest.fixture(scope="module")
def interpreted():
    """All CPU cases in one child process with TRITON_INTERPRET=1: case name -> result."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, *CASES, OPTIMIZER_CASE, CAPTURABLE_CASE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_interpreter_matches_fp64_reference(interpreted, name):
    """Haar and db2 (sym4 once), levels 1-4, divisible and odd rows, limiter on and off, several
    same-shape matrices per call, three steps with weight decay, bf16 parameters, bf16 states,
    plain Adam: parameters, moments and the limiter's norm follow the fp64 reference."""
    check(name, interpreted[name])


def check_optimizer(result: dict, steps: int = 3) -> None:
    assert "error" not in result, result.get("error")
    # one call per step for each same-shape Haar group (two shapes), the db2 group, the level-0 group
    assert result["calls"] == {"haar_group": 2 * steps, "dwt_group": steps, "adam_group": steps}, result
    assert result["param"] < 2e-5, result


def test_interpreter_gwtadamw_backend_triton(interpreted):
    """GWTAdamW(backend="triton") routes every kind of group to the kernels and matches the fp64
    torch backend."""
    check_optimizer(interpreted[OPTIMIZER_CASE])


def check_capturable(result: dict, device: str, steps: int = 4) -> None:
    assert "error" not in result, result.get("error")
    assert result["param"] < 1e-6, result
    assert result["step_device"].startswith(device) and result["step"] == steps - 1, result
    assert result["copy_capturable"] is True, result


def test_interpreter_capturable_matches_host_scalars(interpreted):
    """capturable=True (step counts on the device, step sizes computed there per parameter, a
    tensor lr driven by a scheduler, a state dict saved through the host and loaded) steps as
    capturable=False does."""
    check_capturable(interpreted[CAPTURABLE_CASE], "cpu")


def test_capturable_bad_input_is_refused_before_any_step():
    """capturable needs the triton backend, CUDA parameters and (if a tensor) a device lr; a tensor
    lr without capturable is refused; each with one line naming the value."""
    from gwt import GWTAdamW

    p = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(ValueError, match="capturable=True needs backend='triton'.*not backend='cpu'"):
        GWTAdamW([p], capturable=True, backend="cpu")
    with pytest.raises(ValueError, match="capturable='yes'; valid: True or False"):
        GWTAdamW([p], capturable="yes")
    with pytest.raises(ValueError, match="is a tensor; valid: a Python number, or capturable=True"):
        GWTAdamW([p], lr=torch.tensor(1e-3))
    with pytest.raises((ValueError, RuntimeError), match="capturable=True"):
        GWTAdamW([p], capturable=True)  # CPU parameters, no interpreter: no triton backend for them
    assert p.grad is None and not torch.equal(p, torch.zeros_like(p))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_capturable_step_replays_in_a_graph(monkeypatch):
    """GWTAdamW(capturable=True).step() captured in a CUDA graph and replayed (with the scheduler
    changing a tensor lr between replays) follows eager capturable=False steps; an eager
    capturable step makes no host synchronisation (sync debug mode 'error')."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_capturable(capturable_case("cuda", steps=6, graph=True), "cuda", steps=6)
    from gwt import GWTAdamW

    ps = [torch.nn.Parameter(torch.randn(8, 64, device="cuda")) for _ in range(3)]
    opt = GWTAdamW([dict(params=ps[:2]), dict(params=ps[2:], wavelet="db2")], lr=torch.tensor(1e-3, device="cuda"),
                   capturable=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # builds the kernels and caches the address tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gwtadamw_backend_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_optimizer(optimizer_case("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_fp64_reference(name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check(name, measure("cuda", name, rows=5, count=3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_is_graph_capturable(monkeypatch):
    """After a warm-up call (address tables and scratch cached), a Haar and a db2 step capture in a
    CUDA graph and replay to the same result as eager calls."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from gwt.optim import triton_kernels as tk

    def make():
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(8, 100, generator=gen).cuda() for _ in range(2)]
        gs = [torch.randn(8, 100, generator=gen).cuda() for _ in range(2)]
        return ps, gs

    for fn, extra, k in ((tk.haar_group, {}, 25), (tk.dwt_group, {"wavelet": "db2"}, 27)):
        results = []
        for graph in (False, True):
            ps, gs = make()
            ms = [torch.zeros(8, k, device="cuda") for _ in ps]
            vs = [torch.zeros(8, k, device="cuda") for _ in ps]
            prevs = [torch.full((), math.inf, device="cuda") for _ in ps]
            kw = dict(level=2, beta1=0.9, beta2=0.999, eps=1e-6, alpha=0.25, gamma=1.01,
                      step_size=torch.tensor(1e-2, device="cuda"), decay=torch.tensor(1e-3, device="cuda"), **extra)
            fn(ps, gs, ms, vs, prevs, **kw)  # warm-up: compiles, caches tables
            if graph:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn(ps, gs, ms, vs, prevs, **kw)
                for _ in range(3):
                    g.replay()
            else:
                for _ in range(3):
                    fn(ps, gs, ms, vs, prevs, **kw)
            torch.cuda.synchronize()
            results.append(torch.cat([p.flatten() for p in ps]).cpu())
        torch.testing.assert_close(results[1], results[0])


def test_bad_input_names_the_argument():
    """Wrong shapes, dtypes and host scalars are refused with one line naming them, before any
    kernel is built or tensor changes (triton is not needed for that)."""
    from gwt.optim import triton_kernels as tk

    p = [torch.zeros(2, 8), torch.zeros(2, 9)]
    g = [torch.ones(2, 8), torch.ones(2, 9)]
    m = [torch.zeros(2, 2), torch.zeros(2, 3)]
    kw = dict(level=2, beta1=0.9, beta2=0.999, eps=1e-6, alpha=0.25, gamma=None,
              step_size=torch.tensor(1.0), decay=torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(2, 9\)"):
        tk.haar_group(p, g, m, [x.clone() for x in m], None, **kw)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has shape \(2, 3\)"):
        tk.haar_group([torch.zeros(2, 8)], [torch.ones(2, 8)], [torch.zeros(2, 3)], [torch.zeros(2, 3)], None, **kw)
    with pytest.raises(ValueError, match="prev_norms and gamma"):
        tk.haar_group(p[:1], g[:1], m[:1], m[:1], None, **{**kw, "gamma": 1.01})
    with pytest.raises(ValueError, match=r"params\[0\] has dtype torch.float64"):
        tk.adam_group([torch.zeros(3, dtype=torch.float64)], [torch.zeros(3, dtype=torch.float64)], [torch.zeros(3)],
                      [torch.zeros(3)], beta1=0.9, beta2=0.999, eps=1e-6, step_size=torch.tensor(1.0),
                      decay=torch.tensor(0.0))
    with pytest.raises(ValueError, match="step_size=0.5"):
        tk.adam_group([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], beta1=0.9, beta2=0.999,
                      eps=1e-6, step_size=0.5, decay=torch.tensor(0.0))
    with pytest.raises(ValueError, match="level=0"):
        tk.dwt_group(p[:1], g[:1], m[:1], m[:1], None, wavelet="db2", **{**kw, "level": 0})
    assert torch.equal(p[0], torch.zeros(2, 8)) and torch.equal(m[0], torch.zeros(2, 2))


if __name__ == "__main__":
    # Child process of the `interpreted` fixture: TRITON_INTERPRET=1 is already in the environment,
    # so triton is imported in interpreter mode. One JSON line: case -> result (or its error).
    import warnings

    warnings.filterwarnings("ignore", message="Level value of")
    results = {}
    for case in sys.argv[1:]:
        try:
            if case == OPTIMIZER_CASE:
                results[case] = optimizer_case("cpu")
            elif case == CAPTURABLE_CASE:
                results[case] = capturable_case("cpu")
            else:
                results[case] = measure("cpu", case)
        except Exception as err:  # reported per case by the parent test
            results[case] = {"error": f"{type(err).__name__}: {err}"}
    print(json.dumps(results))
