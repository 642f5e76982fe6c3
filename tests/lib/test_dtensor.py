"""GWT optimizers on FSDP2 DTensor parameters: 2 CPU processes (gloo) against 1 unsharded process.

One spawn of 2 processes runs every case; each rank writes what it saw to a file the tests read.
"""
import os

import pytest
import torch
import torch.nn as nn

from gwt import GWT, GWTAdafactor, GWTAdamW, estimate_state_bytes, optimizer_state_bytes
from gwt.optim import cpu_kernel
from gwt.optim.distributed import local_rows
from tests.helpers import free_port

pytestmark = pytest.mark.slow  # spawns 2 processes (~20 s on 2 shared cores)

WORLD = 2
STEPS = 4
WEIGHTS = ("a.weight", "b.weight", "c.weight", "d.weight")


class Tiny(nn.Module):
    """Odd row counts (5, 7), a 1-row matrix (rank 1 holds none of its rows) and two matrices of
    one shape (batched kernel calls)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 5)
        self.b = nn.Linear(16, 7)
        self.c = nn.Linear(5, 1)
        self.d = nn.Linear(12, 5)

    def forward(self, x12, x16):
        y = torch.tanh(self.a(x12)) + self.d(x12).pow(2)
        return (y.pow(2).sum() + torch.sin(self.b(x16)).sum() + self.c(y).pow(2).sum()) / x12.shape[0]


def _groups(model, **gwt):
    named = dict(model.named_parameters())
    weights = [n for n in named if n in WEIGHTS]
    others = [n for n in named if n not in WEIGHTS]
    return [dict(params=[named[n] for n in weights], param_names=weights, **gwt),
            dict(params=[named[n] for n in others], param_names=others, level=0)]


#: name -> (optimizer factory, whether its states may be checked with DCP's get_optimizer_state_dict)
CASES = {
    "haar2_torch": lambda m: GWTAdamW(_groups(m, wavelet="haar", level=2), lr=1e-2, weight_decay=0.1,
                                      limiter=1.01, backend="torch"),
    "haar2_cpu": lambda m: GWTAdamW(_groups(m, wavelet="haar", level=2), lr=1e-2, weight_decay=0.1,
                                    limiter=1.01, backend="cpu"),
    "db2_1_torch": lambda m: GWTAdamW(_groups(m, wavelet="db2", level=1), lr=1e-2, limiter=1.01, backend="torch"),
    "db2_1_cpu": lambda m: GWTAdamW(_groups(m, wavelet="db2", level=1), lr=1e-2, limiter=1.01, backend="cpu"),
    "haar2_nolimiter_cpu": lambda m: GWTAdamW(_groups(m, wavelet="haar", level=2), lr=1e-2, limiter=None,
                                              backend="cpu"),
    "adafactor": lambda m: GWTAdafactor(_groups(m, wavelet="haar", level=2), lr=1e-2, beta1=0.9, limiter=1.01),
    "wrapper": lambda m: GWT(_groups(m, wavelet="haar", level=2), torch.optim.AdamW, lr=1e-2,
                             detail_scale="ratio"),
}
NEEDS_KERNEL = {"haar2_cpu", "db2_1_cpu", "haar2_nolimiter_cpu"}
DCP_CASES = ("haar2_cpu", "db2_1_torch", "adafactor", "wrapper")


def _inputs(step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(3, 12, generator=gen), torch.randn(3, 16, generator=gen)


def _model():
    torch.manual_seed(0)
    return Tiny()


def _train(model, opt, calls=None):
    """STEPS steps; ``calls`` (a list) gets one counter per step that counts all-reduces inside ``opt.step``."""
    for step in range(STEPS):
        opt.zero_grad()
        model(*_inputs(step)).backward()
        if calls is not None:
            calls.append(0)
        opt.step()
        if calls is not None:
            calls.append(None)  # steps are over: nothing counted until the next one


def _local_state(opt):
    from gwt.optim.distributed import is_dtensor

    out = {}
    for group in opt.param_groups:
        for name, p in zip(group["param_names"], group["params"]):
            out[name] = {k: (v.full_tensor() if is_dtensor(v) else v.clone()) for k, v in opt.state[p].items()}
    return out


def _worker(rank, port, out_dir, cases):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        if calls and calls[-1] is not None:
            calls[-1] += 1
        return real_all_reduce(*args, **kwargs)

    report = {}
    try:
        for case in cases:
            model = _model()
            fully_shard(model)
            opt = CASES[case](model)
            calls.clear()
            dist.all_reduce = counting_all_reduce
            try:
                _train(model, opt, calls)
            finally:
                dist.all_reduce = real_all_reduce
            calls[:] = [c for c in calls if c is not None]
            params = {n: p.full_tensor() for n, p in model.named_parameters()}
            layouts = {}
            names = {id(p): n for n, p in model.named_parameters()}
            for p, state in opt.state.items():  # the wrapper's: its inner optimizer's state of each stand-in
                layouts[names[id(p)]] = {k: (type(v).__name__, tuple(v.shape), tuple(map(repr, v.placements)))
                                  if isinstance(v, DTensor) else (type(v).__name__, tuple(v.shape), None)
                                  for k, v in state.items()}
            param_placements = {n: tuple(map(repr, p.placements)) for n, p in model.named_parameters()}
            entry = dict(params=params, calls=list(calls), layouts=layouts, placements=param_placements,
                         local_bytes=optimizer_state_bytes(opt, local=True), global_bytes=optimizer_state_bytes(opt))
            entry["state"] = _local_state(opt)
            if case == "wrapper":  # its own state dict round trip keeps the inner optimizer's DTensor states
                fresh = CASES[case](model)
                fresh.load_state_dict(opt.state_dict())
                entry["inner_roundtrip"] = [
                    (type(a).__name__, type(b).__name__, torch.equal(a.full_tensor(), b.full_tensor()))
                    for s_old, s_new in zip(opt.inner.state.values(), fresh.inner.state.values())
                    for a, b in ((s_old[k], s_new[k]) for k in ("exp_avg", "exp_avg_sq"))]
            if case in DCP_CASES:
                osd = get_optimizer_state_dict(model, opt)
                entry["dcp_keys"] = sorted(osd["state"])
                entry["dcp_types"] = sorted({type(v).__name__ for s in osd["state"].values() for v in s.values()})
                fresh = CASES[case](model)
                set_optimizer_state_dict(model, fresh, optim_state_dict=osd)
                entry["dcp_roundtrip"] = _local_state(fresh)
            report[case] = entry
        # a whole (unsharded) state dict loads into the sharded optimizer: rows split as the parameters
        if "whole_state" in os.listdir(out_dir):
            model = _model()
            fully_shard(model)
            opt = CASES["haar2_torch"](model)
            opt.load_state_dict(torch.load(os.path.join(out_dir, "whole_state"), weights_only=True))
            report["loaded_whole"] = _local_state(opt)
            report["loaded_layout"] = {names_: type(s["exp_avg"]).__name__ for names_, s in
                                       zip(WEIGHTS, (opt.state[p] for p in opt.param_groups[0]["params"]))}
        # a placement that splits rows is refused
        mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (WORLD,))
        bad = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)]))
        try:
            GWTAdamW([dict(params=[bad], param_names=["bad.weight"])])
            report["bad_placement"] = None
        except ValueError as err:
            report["bad_placement"] = str(err)
        replicated = nn.Parameter(distribute_tensor(_replicated_start(), mesh, [Replicate()]))
        opt = GWTAdamW([replicated], lr=1e-2)
        for _ in range(2):
            replicated.grad = distribute_tensor(_replicated_grad(), mesh, [Replicate()])
            opt.step()
        report["replicated"] = (replicated.to_local().clone(), repr(tuple(opt.state[replicated]["exp_avg"].placements)))
        replicated.grad = distribute_tensor(_replicated_grad(), mesh, [Shard(0)])  # not the parameter's layout
        try:
            opt.step()
            report["grad_layout"] = None
        except RuntimeError as err:
            report["grad_layout"] = str(err)
        torch.save(report, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank closes its connections while the other may still use them
    finally:
        dist.destroy_process_group()


def _replicated_start():
    return torch.linspace(-1, 1, 24).reshape(4, 6)


def _replicated_grad():
    return torch.linspace(0.5, -0.7, 24).reshape(4, 6) ** 3


def _reference(case):
    model = _model()
    opt = CASES[case](model)
    _train(model, opt)
    return model, opt


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    import torch.multiprocessing as mp

    cases = [c for c in CASES if c not in NEEDS_KERNEL or cpu_kernel.library() is not None]
    out = tmp_path_factory.mktemp("dtensor")
    _, ref_opt = _reference("haar2_torch")
    torch.save(ref_opt.state_dict(), out / "whole_state")
    mp.spawn(_worker, args=(free_port(), str(out), cases), nprocs=WORLD, join=True)
    reports = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return cases, reports, ref_opt


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(sharded_run, case):
    cases, reports, _ = sharded_run
    if case not in cases:
        pytest.skip(f"the C kernels could not be built: {cpu_kernel.failure()}")
    model, opt = _reference(case)
    for name, want in model.named_parameters():
        for report in reports:
            got = report[case]["params"][name]
            assert _rel(got, want.detach()) < 1e-6, (case, name)
        assert not torch.equal(want.detach(), _model().get_parameter(name).detach())  # training moved it
    # the states, gathered, equal the unsharded ones (the wrapper's: its inner optimizer's, of the stand-ins)
    named = dict(model.named_parameters())
    assert set(reports[0][case]["state"]) == set(named)
    for name, state in reports[0][case]["state"].items():
        for key, value in state.items():
            want = opt.state[named[name]][key]
            if value.dim():
                assert _rel(value, want) < 1e-5, (case, name, key)
            else:
                torch.testing.assert_close(value, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", ["haar2_torch", "haar2_cpu", "db2_1_torch", "db2_1_cpu", "adafactor", "wrapper"])
def test_states_are_dtensors_laid_out_as_their_parameter(sharded_run, case):
    cases, reports, _ = sharded_run
    if case not in cases:
        pytest.skip("the C kernels could not be built")
    for report in reports:
        layouts, placements = report[case]["layouts"], report[case]["placements"]
        assert set(layouts) == set(placements)
        for name, state in layouts.items():
            for key, (kind, shape, state_placements) in state.items():
                if key in ("step", "prev_norm"):
                    assert kind == "Tensor" and shape == (), (name, key)  # scalars: plain, equal on every rank
                elif key == "col":
                    assert kind == "DTensor" and state_placements == ("Replicate()",)
                else:
                    assert kind == "DTensor" and state_placements == placements[name] == ("Shard(dim=0)",), \
                        (name, key, state_placements)
        if case.startswith("haar2"):
            # global shape = rows x compressed length (ceil(n / 4))
            assert layouts["a.weight"]["exp_avg"][1] == (5, 3)
            assert layouts["b.weight"]["exp_avg"][1] == (7, 4)
            assert layouts["c.weight"]["exp_avg"][1] == (1, 2)
            assert layouts["a.bias"]["exp_avg"][1] == (5,)


@pytest.mark.parametrize("case,per_step", [("haar2_torch", 1), ("haar2_cpu", 1), ("db2_1_torch", 1),
                                           ("db2_1_cpu", 1), ("haar2_nolimiter_cpu", 0), ("adafactor", 3),
                                           ("wrapper", 1)])
def test_all_reduces_per_step(sharded_run, case, per_step):
    """The limiter's norms of all matrices cost one all-reduce per step; without the limiter none.
    GWT-Adafactor: column statistics, RMS clip, limiter; the wrapper's ratio gains: one."""
    cases, reports, _ = sharded_run
    if case not in cases:
        pytest.skip("the C kernels could not be built")
    for report in reports:
        assert report[case]["calls"] == [per_step] * STEPS


@pytest.mark.parametrize("case", ["haar2_torch", "db2_1_torch"])
def test_each_rank_holds_about_half_the_state_and_the_estimate_says_so(sharded_run, case):
    _, reports, _ = sharded_run
    model, opt = _reference(case)
    whole = optimizer_state_bytes(opt)
    wavelet, level = ("haar", 2) if case.startswith("haar") else ("db2", 1)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert estimate_state_bytes(shapes, "gwt", targets=WEIGHTS, wavelet=wavelet, level=level) == whole
    scalars = 8 * len(WEIGHTS) + 4 * (len(shapes) - len(WEIGHTS))  # step (+ prev_norm) on every rank
    for rank, report in enumerate(reports):
        local = report[case]["local_bytes"]
        assert report[case]["global_bytes"] == whole
        assert local == estimate_state_bytes(shapes, "gwt", targets=WEIGHTS, wavelet=wavelet, level=level,
                                             world_size=WORLD, shard=rank)
        # rows 5, 7, 1 and 5 split 3+2, 4+3, 1+0 and 3+2: each rank holds 40-60% of the sharded bytes
        assert 0.35 * (whole - scalars) <= local - scalars <= 0.65 * (whole - scalars)
    assert sum(r[case]["local_bytes"] for r in reports) == whole + scalars * (WORLD - 1)


def test_local_rows_follow_torch_chunk():
    for rows in range(0, 12):
        for world in range(1, 5):
            chunks = list(torch.arange(rows).chunk(world)) if rows else []
            want = [len(chunks[i]) if i < len(chunks) else 0 for i in range(world)]
            assert [local_rows(rows, world, i) for i in range(world)] == want
    with pytest.raises(ValueError, match="world_size"):
        estimate_state_bytes({"w": (4, 8)}, "gwt", world_size=0)
    with pytest.raises(ValueError, match="galore"):
        estimate_state_bytes({"w": (4, 8)}, "galore", world_size=2)


def test_dcp_state_dict_round_trip(sharded_run):
    _, reports, _ = sharded_run
    for case in DCP_CASES:
        for report in reports:
            entry = report[case]
            assert entry["dcp_keys"] == sorted(n for n, _ in Tiny().named_parameters())
            assert "DTensor" in entry["dcp_types"]
            for name, state in entry["state"].items():
                for key, value in state.items():
                    torch.testing.assert_close(entry["dcp_roundtrip"][name][key], value, rtol=0, atol=0)


def test_wrapper_state_dict_round_trip(sharded_run):
    _, reports, _ = sharded_run
    for report in reports:
        pairs = report["wrapper"]["inner_roundtrip"]
        assert len(pairs) == 2 * len(Tiny().state_dict()) and set(pairs) == {("DTensor", "DTensor", True)}


def test_whole_state_dict_loads_split_by_rows(sharded_run):
    _, reports, ref_opt = sharded_run
    named = {}
    for group in ref_opt.param_groups:
        named.update(zip(group["param_names"], group["params"]))
    for report in reports:
        assert set(report["loaded_layout"].values()) == {"DTensor"}
        for name, state in report["loaded_whole"].items():
            for key, value in state.items():
                torch.testing.assert_close(value, ref_opt.state[named[name]][key], rtol=0, atol=0)


def test_bad_placement_and_replicated_parameters(sharded_run):
    _, reports, _ = sharded_run
    for report in reports:
        message = report["bad_placement"]
        assert message is not None and "'bad.weight'" in message and "Shard(dim=1)" in message
        assert "Shard(0)" in message and "Replicate()" in message
    ref = torch.nn.Parameter(_replicated_start())
    opt = GWTAdamW([ref], lr=1e-2)
    for _ in range(2):
        ref.grad = _replicated_grad()
        opt.step()
    for report in reports:  # replicated parameters: every rank steps the whole matrix, as one process
        value, placements = report["replicated"]
        assert placements == "(Replicate(),)"
        torch.testing.assert_close(value, ref.detach(), rtol=1e-6, atol=1e-7)
        assert "Shard(dim=0)" in report["grad_layout"] and "Replicate()" in report["grad_layout"]
