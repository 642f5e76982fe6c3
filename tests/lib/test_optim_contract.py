"""The torch.optim contract for every GWT optimizer and every backend that runs on the CPU:
compile, copies, pickles, state loading (dtypes, old and foreign state dicts, shape checks),
parameter groups, odd shapes and bad arguments. Tiny shapes, one shared set of them, so the
backends that compile reuse their graphs across tests."""
import copy
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

import gwt.optim
from gwt import GWT, GWTAdafactor, GWTAdamW
from gwt.optim import cpu_kernel
from gwt.optim._common import limiter_factor

KERNELS = cpu_kernel.library() is not None
ADAMW_BACKENDS = ["torch", "compile"] + (["cpu"] if KERNELS else [])

#: name -> factory(groups, **overrides); the GWTAdamW entries cover every CPU backend
OPTIMIZERS = {
    **{f"adamw@{b}": (lambda groups, b=b, **kw: GWTAdamW(groups, **{"lr": 1e-2, "weight_decay": 0.1, "backend": b,
                                                                     **kw}))
       for b in ADAMW_BACKENDS},
    "adafactor": lambda groups, **kw: GWTAdafactor(groups, **{"lr": 1e-2, "beta1": 0.9, "limiter": 1.01,
                                                              "weight_decay": 0.1, **kw}),
    "wrapper": lambda groups, **kw: GWT(groups, torch.optim.AdamW, **{"lr": 1e-2, "weight_decay": 0.1, **kw}),
}
#: group kind -> (shape, group options)
KINDS = {"haar": ((6, 16), {"wavelet": "haar", "level": 2}),
         "db2": ((5, 12), {"wavelet": "db2", "level": 1}),
         "level0": ((3, 4), {"level": 0})}


def make(name: str, kinds=tuple(KINDS), dtype=torch.float32, seed: int = 0, rows: int | None = None, **kw):
    """Parameters (one per kind, each in its own group) and the optimizer ``name`` over them."""
    gen = torch.Generator().manual_seed(seed)
    params, groups = [], []
    for kind in kinds:
        shape, options = KINDS[kind]
        shape = (rows, shape[1]) if rows is not None else shape
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
        params.append(p)
        groups.append({"params": [p], **options})
    return params, OPTIMIZERS[name](groups, **kw)


def set_grads(params, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * (1 + step)).to(p.dtype)


def params_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def run(opt, steps: range, step_fn=None) -> None:
    for t in steps:
        set_grads(params_of(opt), t)
        (step_fn or opt.step)()


def state_tensors(opt) -> dict:
    """Every tensor of the optimizer's state dict, flattened to path -> tensor."""
    out = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)

    walk("", opt.state_dict())
    return out


def copy_params(src, dst) -> None:
    """The parameters of optimizer ``src`` into those of ``dst`` (what a checkpoint restores)."""
    with torch.no_grad():
        for a, b in zip(params_of(src), params_of(dst)):
            b.copy_(a)


def assert_same_params(a, b) -> None:
    for x, y in zip(params_of(a), params_of(b)):
        assert torch.equal(x, y)


ALL = list(OPTIMIZERS)


# -- 1. torch.compile over the step ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_compiled_step_equals_eager(name):
    """``torch.compile(opt.step)`` with Haar, db2 and level-0 groups in one optimizer: the C
    kernels are opaque operators to the compiler, so the compiled step gives the eager result."""
    torch._dynamo.reset()
    _, eager = make(name)
    _, comp = make(name)
    run(eager, range(3))
    run(comp, range(3), torch.compile(comp.step))
    for a, b in zip(params_of(eager), params_of(comp)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(torch.cat([p.flatten() for p in params_of(comp)])).all()


@pytest.mark.skipif(not KERNELS, reason="the C kernels did not build here")
def test_kernels_are_registered_operators_with_fake_implementations():
    for op in ("cpu_haar_step", "cpu_dwt_step", "cpu_adam_step"):
        packet = getattr(torch.ops.gwt, op)
        assert packet.default._schema.name == f"gwt::{op}"
        mutated = [a.name for a in packet.default._schema.arguments if a.alias_info and a.alias_info.is_write]
        assert "params" in mutated and "exp_avgs" in mutated and "grads" not in mutated


# -- 2. load_state_dict keeps dtypes -----------------------------------------------------------

# (the wrapper's states belong to its inner optimizer: no state_dtype of its own)
@pytest.mark.parametrize("name, state_dtype", [(n, sd) for n in ("adamw@torch", "adamw@cpu", "adafactor")
                                               for sd in (None, "bfloat16")] + [("wrapper", None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_load_state_dict_keeps_state_dtypes(name, dtype, state_dtype):
    if name not in OPTIMIZERS:
        pytest.skip("the C kernels did not build here")
    kw = {} if name == "wrapper" else {"state_dtype": state_dtype}
    _, opt = make(name, dtype=dtype, **kw)
    run(opt, range(2))
    saved = state_tensors(opt)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _, fresh = make(name, dtype=dtype, **kw)
    copy_params(opt, fresh)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    loaded = state_tensors(fresh)
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    if name != "wrapper":
        want = torch.bfloat16 if state_dtype else torch.float32
        moments = [v for k, v in loaded.items() if k.rsplit("/", 1)[-1] in ("exp_avg", "exp_avg_sq", "row", "col")]
        assert moments and all(v.dtype == want for v in moments)
    run(opt, range(2, 4))
    run(fresh, range(2, 4))
    assert_same_params(opt, fresh)


def test_load_casts_states_to_what_the_optimizer_creates():
    """A state dict saved with bf16 states loads into an fp32-state optimizer as fp32 (and back)."""
    _, opt_b = make("adamw@torch", state_dtype="bfloat16")
    run(opt_b, range(1))
    _, opt_f = make("adamw@torch")
    opt_f.load_state_dict(opt_b.state_dict())
    assert {v.dtype for k, v in state_tensors(opt_f).items() if "exp_avg" in k} == {torch.float32}
    _, opt_b2 = make("adamw@torch", state_dtype="bfloat16")
    opt_b2.load_state_dict(opt_f.state_dict())
    assert {v.dtype for k, v in state_tensors(opt_b2).items() if "exp_avg" in k} == {torch.bfloat16}


# -- 3. deepcopy and pickle --------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_steps_identically(name, how):
    _, opt = make(name)
    run(opt, range(2))
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin is not opt and params_of(twin)[0] is not params_of(opt)[0]
    assert getattr(twin, "backend") == opt.backend and twin.state_dtype == opt.state_dtype
    run(opt, range(2, 4))
    run(twin, range(2, 4))
    assert_same_params(opt, twin)


# -- 4. old and foreign state dicts --------------------------------------------------------------

@pytest.mark.parametrize("name", ["adamw@torch", "adamw@cpu", "adafactor"])
def test_step_saved_as_plain_number_is_accepted(name):
    if name not in OPTIMIZERS:
        pytest.skip("the C kernels did not build here")
    _, opt = make(name)
    run(opt, range(2))
    state = copy.deepcopy(opt.state_dict())
    for entry in state["state"].values():
        entry["step"] = int(entry["step"].item())
    _, fresh = make(name)
    copy_params(opt, fresh)
    fresh.load_state_dict(state)
    run(opt, range(2, 3))
    run(fresh, range(2, 3))
    assert_same_params(opt, fresh)
    assert all(s["step"].item() == 3 for s in fresh.state.values())


def test_plain_adamw_state_dict_is_refused_clearly():
    params, _ = make("adamw@torch")
    adamw = torch.optim.AdamW([{"params": [p]} for p in params])
    set_grads(params, 0)
    adamw.step()
    _, opt = make("adamw@torch")
    with pytest.raises(ValueError, match=r"group 0 .* lacks .*'wavelet'.*not saved by GWTAdamW"):
        opt.load_state_dict(adamw.state_dict())
    assert not opt.state and opt.param_groups[0]["wavelet"] == "haar"  # unchanged


def test_wrapper_refuses_a_state_dict_of_another_optimizer():
    _, adamw = make("adamw@torch")
    _, wrapper = make("wrapper")
    with pytest.raises(ValueError, match=r"group 0 lacks the inner optimizer's options \('inner'\)"):
        wrapper.load_state_dict(adamw.state_dict())
    with pytest.raises(ValueError, match="expected a dict from GWT.state_dict"):
        wrapper.load_state_dict({"weights": {}})


def test_wrapper_state_dict_is_keyed_by_its_parameters_and_checked():
    """The wrapper's state dict has torch's layout (state keyed by its own parameters: the inner
    optimizer's state of each stand-in); the earlier {"gwt", "inner"} layout still loads; a state
    of the wrong shape is refused naming the parameter, before anything changes."""
    params, wrapper = make("wrapper")
    run(wrapper, range(2))
    saved = copy.deepcopy(wrapper.state_dict())
    assert sorted(saved["state"]) == list(range(len(params)))
    assert all("inner" in g for g in saved["param_groups"])
    for index, p in enumerate(params):
        want = tuple(wrapper.stand_ins.get(p, p).shape)
        assert tuple(saved["state"][index]["exp_avg"].shape) == want
    earlier = {"gwt": {"state": {}, "param_groups": [{k: v for k, v in g.items() if k != "inner"}
                                                     for g in saved["param_groups"]]},
               "inner": copy.deepcopy(wrapper.inner.state_dict())}
    reference = copy.deepcopy(wrapper)
    run(reference, range(2, 4))
    for layout in (saved, earlier):
        _, fresh = make("wrapper")
        fresh.load_state_dict(copy.deepcopy(layout))
        copy_params(wrapper, fresh)
        run(fresh, range(2, 4))
        assert_same_params(reference, fresh)
    bad = copy.deepcopy(saved)
    bad["state"][0]["exp_avg"] = torch.zeros(3, 3)
    _, fresh = make("wrapper")
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter .* has shape \(3, 3\), but this optimizer needs"):
        fresh.load_state_dict(bad)
    assert not fresh.state and not fresh.inner.state


@pytest.mark.parametrize("backend", ADAMW_BACKENDS)
def test_mismatched_state_shape_raises_before_any_kernel_call(backend, monkeypatch):
    """A state saved for a (256, 64) weight loaded onto a (256, 256) one: an error naming the
    parameter and both shapes at load time; the optimizer is unchanged and no kernel runs."""
    small = torch.nn.Parameter(torch.randn(256, 64))
    saved = GWTAdamW([{"params": [("layers.0.q.weight", small)]}], backend=backend)
    small.grad = torch.randn(256, 64)
    saved.step()
    big = torch.nn.Parameter(torch.randn(256, 256))
    opt = GWTAdamW([{"params": [("layers.0.q.weight", big)]}], backend=backend)

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran")

    for fn in ("haar_step", "dwt_step", "adam_step"):
        monkeypatch.setattr(cpu_kernel, fn, no_kernel)
    with pytest.raises(ValueError, match=r"'layers.0.q.weight' has shape \(256, 16\).*needs \(256, 64\)"):
        opt.load_state_dict(saved.state_dict())
    assert not opt.state


# -- 5. small ones -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adamw@torch", "adafactor", "wrapper"])
def test_tensor_lr_is_refused_with_a_clear_message(name):
    with pytest.raises(ValueError, match=r"lr=tensor\(0.0100\) is a tensor; valid: a Python number"):
        make(name, lr=torch.tensor(0.01))


@pytest.mark.parametrize("name", ALL)
def test_refused_add_param_group_leaves_the_optimizer_unchanged(name):
    _, opt = make(name)
    before = copy.deepcopy(opt.param_groups)
    bad = torch.nn.Parameter(torch.randn(4, 16))
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [bad], "level": 9})  # too deep for rows of 16
    assert len(opt.param_groups) == len(before)
    assert [sorted(g) for g in opt.param_groups] == [sorted(g) for g in before]
    run(opt, range(1))  # still steps


@pytest.mark.parametrize("name", ALL)
def test_add_param_group_after_construction_steps_the_new_group(name):
    """A group added after construction steps exactly as if it had been passed to the constructor
    (for the wrapper: the inner optimizer gets the matching group)."""
    kinds = list(KINDS)
    _, whole = make(name, kinds)
    params, grown = make(name, kinds[:1])
    rest, _ = make(name, kinds)
    for kind, p in zip(kinds[1:], rest[1:]):
        grown.add_param_group({"params": [p], **KINDS[kind][1]})
    run(whole, range(3))
    run(grown, range(3))
    assert_same_params(whole, grown)
    moved = [not torch.equal(a, b) for a, b in zip(params_of(grown), make(name, kinds)[0])]
    assert all(moved), moved


@pytest.mark.parametrize("name", ALL)
def test_zero_row_parameters_behave_the_same_everywhere(name):
    """Parameters with no rows: states of their shape, nothing to update, no error."""
    params, opt = make(name, rows=0)
    run(opt, range(2))
    assert all(p.shape[0] == 0 for p in params)
    if name != "wrapper":
        assert all(opt.state[p]["step"].item() == 2 for p in params)


@pytest.mark.parametrize("name", ALL)
def test_empty_rows_in_a_gwt_group_are_named(name):
    p = torch.nn.Parameter(torch.randn(8, 0))
    with pytest.raises(ValueError, match=r"parameter w of shape \(8, 0\) has rows of length 0.*level=0"):
        OPTIMIZERS[name]([{"params": [("w", p)], "level": 1}])


@pytest.mark.parametrize("eps", [0.0, -1e-8])
def test_eps_must_be_positive(eps):
    p = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(ValueError, match=rf"eps={eps} is out of range; valid: a number in \(0.0, inf\)"):
        GWTAdamW([p], eps=eps)


# -- backends ------------------------------------------------------------------------------------

def test_backend_option_and_environment_variable(monkeypatch):
    p = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"backend='fast' is not a backend; valid: auto, torch, compile, cpu"):
        GWTAdamW([p], backend="fast")
    with pytest.raises(ValueError, match=r"compile=True is not an option of GWTAdamW; valid: backend='compile'"):
        GWTAdamW([p], compile=True)
    with pytest.raises(ValueError, match=r"backend='cpu' is not available for GWTAdafactor; valid: auto, torch"):
        GWTAdafactor([p], backend="cpu")
    monkeypatch.setenv("GWT_BACKEND", "torch")
    assert GWTAdamW([p], backend=None).backend == "torch"
    monkeypatch.setenv("GWT_BACKEND", "nope")
    with pytest.raises(ValueError, match="environment variable GWT_BACKEND='nope'"):
        GWTAdamW([p], backend=None)


def test_auto_backend_choice():
    """auto: the C kernels for fp32 CPU tensors (when built), torch for the rest; ptwt for
    boundaries other than zero."""
    shapes = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}
    params = {k: torch.nn.Parameter(torch.randn(4, 16, dtype=d)) for k, d in shapes.items()}
    opt = GWTAdamW([{"params": list(params.values())},
                    {"params": [torch.nn.Parameter(torch.randn(4, 16))], "wavelet": "db2", "level": 1,
                     "boundary": "symmetric"}], backend="auto")
    run(opt, range(1))
    kernel = "cpu" if KERNELS else "torch"
    assert opt.step_backends() == {f"haar@{kernel}": 1, "haar@torch": 2, "dwt@ptwt": 1}


@pytest.mark.skipif(not KERNELS, reason="the C kernels did not build here")
def test_c_limiter_matches_the_python_definition():
    """The limiter inside gwt/csrc/haar_cpu.c against :func:`limiter_factor`: a previous norm
    small enough that the limiter clips, then ``prev`` and the step compared with the torch code
    in fp64 (which calls limiter_factor)."""
    torch.manual_seed(0)
    w0, g = torch.randn(8, 64, dtype=torch.float64), torch.randn(8, 64, dtype=torch.float64)
    out = {}
    for backend, dtype in (("cpu", torch.float32), ("torch", torch.float64)):
        p = torch.nn.Parameter(w0.to(dtype, copy=True))
        opt = GWTAdamW([p], lr=1e-2, level=2, eps=0.1, backend=backend)
        p.grad = g.to(dtype)
        opt.step()
        opt.state[p]["prev_norm"].fill_(0.05)  # far below ||N||: lam > 1
        opt.step()
        out[backend] = (p.detach().double(), opt.state[p]["prev_norm"].double())
    torch.testing.assert_close(out["cpu"][1], out["torch"][1], rtol=1e-6, atol=0)
    # the limiter clipped to gamma * prev, per the Python definition
    assert out["torch"][1].item() == pytest.approx(0.05 * 1.01, rel=1e-6)
    lam = limiter_factor(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), 1.01)
    assert lam.item() == pytest.approx(max(1.0 / (0.5 + 1e-8), 1.01) / 1.01)
    moved = (out["torch"][0] - w0).norm()
    assert ((out["cpu"][0] - out["torch"][0]).norm() / moved).item() < 1e-5


@pytest.mark.skipif(not KERNELS, reason="the C kernels did not build here")
def test_failed_kernel_build_warns_once_and_runs_torch(tmp_path):
    """A compiler error (a bogus flag) in a fresh cache: one warning with the compiler's message
    naming the path that runs instead, and the steps of two optimizers equal the torch backend's."""
    script = """
import warnings, torch
from gwt import GWTAdamW
warnings.simplefilter("always")
torch.manual_seed(0)
w0, g = torch.randn(4, 16), torch.randn(4, 16)
with warnings.catch_warnings(record=True) as caught:
    results = []
    for backend in ("auto", "auto", "torch"):
        p = torch.nn.Parameter(w0.clone())
        opt = GWTAdamW([p], lr=1e-2, backend=backend)
        p.grad = g
        opt.step(); opt.step()
        results.append(p.detach())
        assert opt.step_backends() == {"haar@torch": 1}, opt.step_backends()
assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[2])
messages = [str(w.message) for w in caught if "could not be built" in str(w.message)]
assert len(messages) == 1, messages
print(messages[0])
"""
    env = dict(os.environ, GWT_CPU_KERNEL_CFLAGS="--no-such-flag-gwt", GWT_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the torch backend runs instead" in done.stdout and "--no-such-flag-gwt" in done.stdout, done.stdout


def test_triton_backend_calls_the_triton_kernels(monkeypatch):
    """backend='triton' hands each batch of same-shape matrices to gwt.optim.triton_kernels with
    0-d fp32 step scalars; a stand-in module that runs the torch code gives the torch backend's
    result. (The kernels themselves are tested with the Triton kernels' own tests.)"""
    from gwt.optim import adamw as gwt_adamw

    calls = []

    class FakeTriton:
        @staticmethod
        def available():
            return True

        @staticmethod
        def _scalars(step_size, decay):
            assert step_size.dim() == 0 and step_size.dtype == torch.float32
            assert decay.dim() == 0 and decay.dtype == torch.float32
            return step_size.double(), decay.double()

        @classmethod
        def haar_group(cls, params, grads, exp_avgs, exp_avg_sqs, prev_norms, *, level, beta1, beta2, eps, alpha,
                       gamma, step_size, decay):
            calls.append(("haar", len(params)))
            gwt_adamw.gwt_haar_group(params, grads, exp_avgs, exp_avg_sqs, prev_norms,
                                     *cls._scalars(step_size, decay), beta1, beta2, eps, alpha, gamma, level)

        @classmethod
        def dwt_group(cls, params, grads, exp_avgs, exp_avg_sqs, prev_norms, *, wavelet, level, beta1, beta2, eps,
                      alpha, gamma, step_size, decay):
            calls.append((wavelet, len(params)))
            from gwt.wavelets import RowTransform

            step, dec = cls._scalars(step_size, decay)
            for i, p in enumerate(params):
                gwt_adamw.gwt_general_step(p, grads[i], exp_avgs[i], exp_avg_sqs[i],
                                           None if prev_norms is None else prev_norms[i], step, dec, beta1, beta2,
                                           eps, alpha, gamma, RowTransform(p.shape[-1], wavelet, level))

        @classmethod
        def adam_group(cls, params, grads, exp_avgs, exp_avg_sqs, *, beta1, beta2, eps, step_size, decay):
            calls.append(("adam", len(params)))
            gwt_adamw.adam_group(params, grads, exp_avgs, exp_avg_sqs, *cls._scalars(step_size, decay), beta1,
                                 beta2, eps)

    monkeypatch.setitem(sys.modules, "gwt.optim.triton_kernels", FakeTriton)
    monkeypatch.setattr(gwt.optim, "triton_kernels", FakeTriton, raising=False)
    _, tri = make("adamw@torch", backend="triton")
    _, ref = make("adamw@torch")
    run(tri, range(3))
    run(ref, range(3))
    assert sorted(set(calls)) == [("adam", 1), ("db2", 1), ("haar", 1)]
    assert tri.step_backends() == {"haar@triton": 1, "dwt@triton": 1, "adam@triton": 1}
    for a, b in zip(params_of(tri), params_of(ref)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_triton_backend_refused_without_triton(monkeypatch):
    class NoTriton:
        @staticmethod
        def available():
            return False

    monkeypatch.setitem(sys.modules, "gwt.optim.triton_kernels", NoTriton)
    monkeypatch.setattr(gwt.optim, "triton_kernels", NoTriton, raising=False)
    with pytest.raises(RuntimeError, match="backend='triton' needs triton and a CUDA device"):
        GWTAdamW([torch.nn.Parameter(torch.randn(4, 8))], backend="triton")
