"""GWTAdamW against an independent reference, the ptwt path, torch AdamW, and its contracts."""
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import pywt
import torch

from gwt import GWTAdamW

B1, B2 = 0.9, 0.999


def reference_gwt_adam(w0, grads, *, wavelet, level, alpha, lr, eps, weight_decay, gamma):
    """Multi-level GWT-Adam written from docs/update_rule.md with pywt in float64 numpy.

    Kept deliberately independent of gwt/: pywt transforms, explicit per-level detail scaling.
    """
    w = w0.copy()
    m = v = prev = None
    n = w.shape[-1]
    for t, g in enumerate(grads, start=1):
        coeffs = pywt.wavedec(g, wavelet, mode="zero", level=level, axis=-1)  # [A_l, D_l, ..., D_1]
        a = coeffs[0]
        m = (1 - B1) * a if m is None else B1 * m + (1 - B1) * a
        v = (1 - B2) * a**2 if v is None else B2 * v + (1 - B2) * a**2
        denom = np.sqrt(v) + eps
        normalized = m / denom
        lam = 1.0
        if gamma is not None:
            norm = np.linalg.norm(normalized)
            if t > 1:
                lam = max(norm / (prev + 1e-8), gamma) / gamma
            normalized = normalized / lam
            prev = np.linalg.norm(normalized)
        new_coeffs = [normalized]
        aligned = denom
        for detail in coeffs[1:]:
            new_coeffs.append(detail / (aligned[:, : detail.shape[-1]] * lam))
            aligned = np.repeat(aligned, 2, axis=-1)
        update = pywt.waverec(new_coeffs, wavelet, mode="zero", axis=-1)[:, :n] * alpha
        w = w - lr * math.sqrt(1 - B2**t) / (1 - B1**t) * update
        w = w - lr * weight_decay * w
    return w


def run_gwt(w0, grads, **kw):
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = GWTAdamW([p], betas=(B1, B2), **kw)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy(), opt


def make_problem(shape, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape)
    # Noise plus a growing consistent direction: the normalized update's norm grows from step to
    # step, so the limiter really clips (checked by test_limiter_is_active_in_reference_problem).
    direction = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) + 0.5 * t * direction for t in range(steps)]
    return w0, grads


SHAPES = [(6, 64), (5, 48), (4, 37), (3, 7), (2, 130)]


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("level", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [1.01, None])
def test_matches_independent_reference(wavelet, level, shape, gamma):
    from gwt.wavelets import approx_lengths

    lengths = [shape[1], *approx_lengths(shape[1], wavelet, level)]
    if any(b >= a for a, b in zip(lengths, lengths[1:])):
        with pytest.raises(ValueError, match="too deep"):
            run_gwt(*make_problem(shape), lr=1e-2, wavelet=wavelet, level=level)
        return
    kw = dict(wavelet=wavelet, level=level, alpha=0.25, lr=1e-2, eps=1e-6, weight_decay=0.1)
    w0, grads = make_problem(shape)
    expected = reference_gwt_adam(w0, grads, gamma=gamma, **kw)
    got, opt = run_gwt(w0, grads, limiter=gamma, **kw)
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected - w0)
    assert rel < 1e-10, rel
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].shape[-1] == lengths[-1]


def test_limiter_is_active_in_reference_problem():
    """The drifting gradients above do trigger the limiter (else the limiter tests prove nothing)."""
    kw = dict(wavelet="haar", level=2, alpha=0.25, lr=1e-2, eps=1e-6, weight_decay=0.0)
    w0, grads = make_problem((6, 64))
    on = reference_gwt_adam(w0, grads, gamma=1.01, **kw)
    off = reference_gwt_adam(w0, grads, gamma=None, **kw)
    assert np.linalg.norm(on - off) > 1e-4 * np.linalg.norm(off - w0)


@pytest.mark.parametrize("level", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("shape", [(8, 128), (4, 100), (3, 7 * 19)])
def test_haar_closed_form_equals_ptwt_path(level, shape):
    w0, grads = make_problem(shape, steps=5, seed=level)
    if math.ceil(shape[1] / 2 ** (level - 1)) < 2:
        pytest.skip("level deeper than the row length allows")
    fast, opt = run_gwt(w0, grads, lr=1e-2, wavelet="haar", level=level, backend="torch")
    assert opt.step_backends() == {"haar@torch": 1}
    # db1 is Haar under another name: the general transform (ptwt)
    slow, opt = run_gwt(w0, grads, lr=1e-2, wavelet="db1", level=level, backend="torch")
    assert opt.step_backends() == {"dwt@ptwt": 1}
    assert np.linalg.norm(fast - slow) / np.linalg.norm(slow - w0) < 1e-12


def test_level0_equals_torch_adamw_without_eps():
    """With eps -> 0 (eps = 0 itself is refused) and no weight decay the released convention is
    exactly AdamW."""
    w0, grads = make_problem((5, 9), steps=8)
    ours, _ = run_gwt(w0, grads, lr=1e-2, eps=1e-300, level=0)
    p = torch.nn.Parameter(torch.tensor(w0))
    ref = torch.optim.AdamW([p], lr=1e-2, betas=(B1, B2), eps=0.0, weight_decay=0.0)
    for g in grads:
        p.grad = torch.tensor(g)
        ref.step()
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("step", [1, 3])
def test_level0_eps_convention(step):
    """Released: sqrt(V) + eps with the bias correction in the step size. At step t that is
    torch AdamW with eps_torch = eps / sqrt(1 - beta2**t): the eps conventions differ by
    exactly that factor, nothing else."""
    eps = 1e-2
    w0, grads = make_problem((4, 6), steps=step)
    ours, _ = run_gwt(w0, grads, lr=1e-2, eps=eps, level=0)
    p = torch.nn.Parameter(torch.tensor(w0))
    torch_eps = eps / math.sqrt(1 - B2**step)
    # Steps before the last do not depend on eps in the moments, only in the update; replay the
    # first step-1 updates with their own per-step eps, one fresh optimizer step at a time.
    ref = torch.optim.AdamW([p], lr=1e-2, betas=(B1, B2), eps=torch_eps, weight_decay=0.0)
    for t, g in enumerate(grads, start=1):
        ref.param_groups[0]["eps"] = eps / math.sqrt(1 - B2**t)
        p.grad = torch.tensor(g)
        ref.step()
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-12, atol=1e-14)
    plain, _ = run_gwt(w0, grads, lr=1e-2, eps=eps, level=0, wavelet=None)
    np.testing.assert_array_equal(plain, ours)


def test_bf16_params_fp32_states_and_bf16_option():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 32, dtype=torch.bfloat16))
    opt = GWTAdamW([p], lr=1e-2, level=2)
    p.grad = torch.randn(8, 32, dtype=torch.bfloat16)
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].shape == (8, 8)
    assert p.dtype == torch.bfloat16
    # The update is computed in fp32 from the same bf16 inputs: compare with an fp32 run.
    p2 = torch.nn.Parameter(torch.randn(8, 32, dtype=torch.bfloat16))
    q = torch.nn.Parameter(p2.detach().float().clone())
    opt_b = GWTAdamW([p2], lr=1e-2, level=2)
    opt_f = GWTAdamW([q], lr=1e-2, level=2)
    g = torch.randn(8, 32, dtype=torch.bfloat16)
    p2.grad, q.grad = g, g.float()
    opt_b.step()
    opt_f.step()
    assert torch.equal(p2.detach(), q.detach().to(torch.bfloat16))
    half = torch.nn.Parameter(torch.randn(8, 32))
    opt_h = GWTAdamW([half], lr=1e-2, level=2, state_dtype="bfloat16")
    half.grad = torch.randn(8, 32)
    opt_h.step()
    assert opt_h.state[half]["exp_avg_sq"].dtype == torch.bfloat16


def test_state_dict_round_trip_is_bitwise(tmp_path, tiny_llama):
    from tests.helpers import lm_loss
    from gwt import gwt_param_groups

    def make():
        import copy

        model = copy.deepcopy(tiny_llama)
        opt = GWTAdamW(gwt_param_groups(model, wavelet="haar", level=2), lr=1e-2)
        return model, opt

    def train(model, opt, seeds):
        losses = []
        for s in seeds:
            opt.zero_grad()
            loss = lm_loss(model, seed=s)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    model_a, opt_a = make()
    straight = train(model_a, opt_a, range(6))
    model_b, opt_b = make()
    train(model_b, opt_b, range(3))
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, tmp_path / "ckpt.pt")
    blob = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model_c, opt_c = make()
    model_c.load_state_dict(blob["model"])
    opt_c.load_state_dict(blob["opt"])
    resumed = train(model_c, opt_c, range(3, 6))
    assert resumed == straight[3:]
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(pa, pc)


def test_bad_inputs_raise_clear_errors():
    p = torch.nn.Parameter(torch.randn(4, 16))
    with pytest.raises(ValueError, match="wavelet='nope'"):
        GWTAdamW([p], wavelet="nope")
    with pytest.raises(ValueError, match="level=-1"):
        GWTAdamW([p], level=-1)
    with pytest.raises(ValueError, match="level=1.5"):
        GWTAdamW([p], level=1.5)
    with pytest.raises(ValueError, match="alpha=0"):
        GWTAdamW([p], alpha=0)
    with pytest.raises(ValueError, match="lr=-1"):
        GWTAdamW([p], lr=-1)
    with pytest.raises(ValueError, match=r"betas\[1\]=1.0"):
        GWTAdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="limiter=0.5"):
        GWTAdamW([p], limiter=0.5)
    with pytest.raises(ValueError, match="boundary='wrap'"):
        GWTAdamW([p], boundary="wrap")
    with pytest.raises(ValueError, match="too deep"):
        GWTAdamW([p], level=5)
    with pytest.raises(ValueError, match="2-D matrices only"):
        GWTAdamW([torch.nn.Parameter(torch.randn(16))], level=1)
    GWTAdamW([torch.nn.Parameter(torch.randn(16))], level=0)  # plain Adam takes vectors
    emb = torch.nn.Embedding(10, 8, sparse=True)
    opt = GWTAdamW([emb.weight], level=0)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    c = torch.nn.Parameter(torch.randn(4, 8, dtype=torch.complex64))
    opt = GWTAdamW([c], level=1)
    c.grad = torch.randn(4, 8, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


@pytest.mark.slow
def test_compiled_step_matches_eager():
    torch.manual_seed(0)
    shapes = [(16, 64), (12, 44)]
    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        vec = torch.nn.Parameter(torch.randn(10))
        opt = GWTAdamW([{"params": params}, {"params": [vec], "level": 0}], lr=1e-2, level=2,
                       backend="compile" if flag else "torch")
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in [*params, vec]:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        results.append([p.detach().clone() for p in [*params, vec]])
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile_step", [False, True])
def test_cuda_tracks_fp64_reference(compile_step):
    """fp32 on the GPU (eager and compiled, several matrices stepped together) tracks the fp64
    CPU run as closely as the fp32 CPU torch path does; bf16 parameters keep fp32 states."""
    torch.manual_seed(0)
    shapes = [(64, 200), (64, 200), (32, 96)]
    w0 = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) * (1 + t) for s in shapes] for t in range(4)]
    out = {}
    for name, device, dtype, comp in (("fp64", "cpu", torch.float64, False), ("cpu32", "cpu", torch.float32, False),
                                      ("cuda32", "cuda", torch.float32, compile_step)):
        ps = [torch.nn.Parameter(w.to(device, dtype, copy=True)) for w in w0]
        opt = GWTAdamW(ps, lr=1e-2, level=3, weight_decay=0.1, backend="compile" if comp else "torch")
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.to(device, dtype)
            opt.step()
        out[name] = torch.cat([p.detach().double().cpu().flatten() for p in ps])
    moved = (out["fp64"] - torch.cat([w.flatten() for w in w0])).norm()
    err_cuda = (out["cuda32"] - out["fp64"]).norm() / moved
    err_cpu = (out["cpu32"] - out["fp64"]).norm() / moved
    assert err_cuda < 1e-4 and err_cuda < 3 * err_cpu + 1e-6, (err_cuda, err_cpu)
    pb = torch.nn.Parameter(w0[0].to("cuda", torch.bfloat16, copy=True))
    opt = GWTAdamW([pb], lr=1e-2, level=3, backend="compile" if compile_step else "torch")
    pb.grad = grads[0][0].cuda().bfloat16()
    opt.step()
    assert opt.state[pb]["exp_avg"].dtype == torch.float32 and opt.state[pb]["exp_avg"].is_cuda
    assert pb.dtype == torch.bfloat16


def _kernel_torch_fp64(shape, seed: int, path: str, **options):
    """The same 5 steps with the fp32 C kernel, the fp32 torch path and fp64: each run's
    parameter error relative to the distance moved in fp64, and the kernel's relative error in V.
    Checks that the kernel run took `path` and the others did not."""
    from gwt.optim import cpu_kernel

    assert cpu_kernel.library() is not None, cpu_kernel.failure()
    torch.manual_seed(seed)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) * (1 + t) for t in range(5)]
    out = {}
    for name, dtype, use_kernel in (("kernel", torch.float32, True), ("torch", torch.float32, False),
                                    ("fp64", torch.float64, False)):
        p = torch.nn.Parameter(w0.clone().to(dtype))
        opt = GWTAdamW([p], lr=1e-2, weight_decay=0.1, backend="cpu" if use_kernel else "torch", **options)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        taken = opt.step_backends()
        assert (taken == {path: 1}) == (name == "kernel"), (name, taken)
        out[name] = (p.detach().double(), opt.state[p]["exp_avg_sq"].double())
    moved = (out["fp64"][0] - w0).norm()
    err = {k: ((out[k][0] - out["fp64"][0]).norm() / moved).item() for k in ("kernel", "torch")}
    v_err = ((out["kernel"][1] - out["fp64"][1]).norm() / out["fp64"][1].norm()).item()
    return err, v_err


@pytest.mark.parametrize("level", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(16, 256), (9, 300), (5, 129)])
@pytest.mark.parametrize("limiter", [1.01, None])
def test_cpu_kernel_as_accurate_as_torch_path(level, shape, limiter):
    """The fp32 C kernel and the fp32 torch path both track the fp64 result equally well.

    (GWT updates can be huge where a block mean is tiny, so fp32 rounding is judged against
    the fp64 run rather than with a fixed tolerance.)"""
    err, v_err = _kernel_torch_fp64(shape, level, "haar@cpu", level=level, limiter=limiter)
    assert err["kernel"] < 1e-4 and err["kernel"] < 3 * err["torch"] + 1e-6, err
    assert v_err < 1e-6, v_err


@pytest.mark.parametrize("wavelet", ["db2", "sym4", "coif1", "bior2.2"])
@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("shape", [(6, 37), (5, 130), (4, 517)])
@pytest.mark.parametrize("limiter", [1.01, None])
def test_cpu_dwt_kernel_as_accurate_as_ptwt_path(wavelet, level, shape, limiter):
    """Non-Haar wavelets on fp32 CPU tensors take the C kernel of gwt/csrc/dwt_cpu.c; it tracks
    the fp64 ptwt run to fp32 rounding (odd lengths and a biorthogonal wavelet included).

    eps = 0.1 keeps every denominator away from 0: with the default eps a few tiny
    approximation coefficients amplify fp32 rounding arbitrarily (the kernel and the fp32
    ptwt path then differ from fp64 by 1e-7 to 1e-4, each luckier in about half the cases)."""
    err, v_err = _kernel_torch_fp64(shape, level, "dwt@cpu", wavelet=wavelet, level=level, limiter=limiter,
                                    alpha=0.5, eps=0.1)
    assert err["kernel"] < 2e-5 and err["kernel"] < 1.5 * err["torch"], err
    assert v_err < 1e-6, v_err


def test_cpu_dwt_kernel_only_for_zero_boundary():
    """Other boundary modes keep the ptwt path (the kernel implements mode "zero" only)."""
    p = torch.nn.Parameter(torch.randn(4, 64))
    p.grad = torch.randn(4, 64)
    for boundary, path in (("zero", "dwt@cpu"), ("symmetric", "dwt@ptwt"), ("periodic", "dwt@ptwt")):
        opt = GWTAdamW([p], lr=1e-3, wavelet="db2", level=2, boundary=boundary, backend="cpu")
        opt.step()
        assert opt.step_backends() == {path: 1}


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_cpu_kernel_batches_same_shape_matrices(wavelet):
    """Same-shape matrices share one kernel call per pass; each keeps its own limiter state and
    step size, so the result equals stepping each matrix alone through the torch path
    (eps = 0.1 keeps fp32 rounding from being amplified by tiny denominators)."""
    torch.manual_seed(3)
    shapes = [(12, 64), (12, 64), (12, 64), (7, 40)]
    w0 = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) * (1 + 3 * i) * (1 + t) for i, s in enumerate(shapes)] for t in range(4)]
    out = {}
    for use_kernel in (True, False):
        ps = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = GWTAdamW(ps, lr=1e-2, wavelet=wavelet, level=2, weight_decay=0.1, eps=0.1,
                       backend="cpu" if use_kernel else "torch")
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
        out[use_kernel] = (ps, [opt.state[p]["prev_norm"].item() for p in ps])
    for a, b, w in zip(out[True][0], out[False][0], w0):  # fp32 rounding, relative to the distance moved
        assert ((a - b).norm() / (b - w).norm()).item() < 1e-5
    prev = out[True][1]
    assert len(set(round(x, 3) for x in prev)) == len(prev)  # one limiter state per matrix
    torch.testing.assert_close(torch.tensor(prev), torch.tensor(out[False][1]), rtol=1e-5, atol=0)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the SSE3 switch is x86-only")
def test_cpu_kernel_without_sse3_matches_torch_path(tmp_path):
    """The plain loops that machines without SSE3 run (and that handle other block lengths):
    built with GWT_CPU_KERNEL_CFLAGS=-mno-sse3 into a fresh cache, in a fresh process."""
    script = """
import torch
from gwt import GWTAdamW
from gwt.optim import cpu_kernel
assert cpu_kernel.library() is not None, cpu_kernel.failure()
torch.manual_seed(0)
for wavelet, level, shape in (("haar", 1, (6, 66)), ("haar", 2, (5, 130)), ("haar", 3, (4, 77)), ("db2", 2, (5, 130))):
    w0, grads = torch.randn(shape), [torch.randn(shape) * (1 + t) for t in range(4)]
    out = []
    for use_kernel in (True, False):
        p = torch.nn.Parameter(w0.clone())
        opt = GWTAdamW([p], lr=1e-2, wavelet=wavelet, level=level, eps=0.1, weight_decay=0.1,
                       backend="cpu" if use_kernel else "torch")
        for g in grads:
            p.grad = g
            opt.step()
        out.append(p.detach())
    err = ((out[0] - out[1]).norm() / (out[1] - w0).norm()).item()
    assert err < 1e-5, (wavelet, level, shape, err)
print("ok")
"""
    env = dict(os.environ, GWT_CPU_KERNEL_CFLAGS="-mno-sse3", GWT_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert len(list(tmp_path.glob("gwt_cpu_*.so"))) == 1  # built there, with the extra flag


def test_cpu_kernel_plain_adam_matches_torch_path():
    """Level-0 groups on fp32 CPU tensors take the C kernel; it follows the torch path."""
    torch.manual_seed(0)
    shapes = [(33, 17), (50,)]
    w0 = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
    out = {}
    for use_kernel in (True, False):
        ps = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = GWTAdamW(ps, lr=1e-2, level=0, weight_decay=0.1, backend="cpu" if use_kernel else "torch")
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
        out[use_kernel] = ps
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
