"""Fuzz of the C kernel entries and of state loading (seeded): random shapes, levels, wavelets
and batch sizes step like the torch code; every corrupted argument (state of another shape,
dtype, layout, count, limiter state) raises ValueError before the kernel runs, leaving every
tensor untouched; a state saved for another shape never loads."""
import random

import pytest
import torch

from gwt import GWTAdamW
from gwt.optim import cpu_kernel
from gwt.optim.base import GWTOptimizerBase
from gwt.wavelets import check_depth

pytestmark = pytest.mark.skipif(cpu_kernel.library() is None, reason="the C kernels did not build here")

WAVELETS = ["haar", "db2", "sym3", "coif1", "bior2.2", "db4"]


def random_case(rng: random.Random):
    """(kind, wavelet, level, shape, count, limiter) of a valid kernel call."""
    kind = rng.choice(["haar", "dwt", "adam"])
    rows, n = rng.randint(0, 6), rng.randint(2, 70)
    if kind == "adam":
        return kind, None, 0, (rows, n), rng.randint(1, 3), None
    wavelet = "haar" if kind == "haar" else rng.choice(WAVELETS[1:])
    for level in range(rng.randint(1, 5), 0, -1):
        try:
            check_depth((rows, n), wavelet, level, "zero")
            break
        except ValueError:
            continue
    else:
        return random_case(rng)
    return kind, wavelet, level, (rows, n), rng.randint(1, 3), rng.choice([1.01, None])


def tensors_for(kind, wavelet, level, shape, count, limiter, gen):
    group = {"wavelet": wavelet, "level": level, "boundary": "zero"}
    state_shape = shape if kind == "adam" else GWTOptimizerBase.approx_shape(torch.empty(shape), group)
    params = [torch.randn(shape, generator=gen) for _ in range(count)]
    grads = [torch.randn(shape, generator=gen) for _ in range(count)]
    exp_avgs = [torch.rand(state_shape, generator=gen) for _ in range(count)]
    exp_avg_sqs = [torch.rand(state_shape, generator=gen) + 0.1 for _ in range(count)]
    prev = [torch.tensor(float(torch.rand((), generator=gen)) + 0.5) for _ in range(count)] if limiter else None
    return params, grads, exp_avgs, exp_avg_sqs, prev


def call(kind, wavelet, level, limiter, params, grads, exp_avgs, exp_avg_sqs, prev):
    scalars = dict(beta1=0.9, beta2=0.999, eps=0.1)
    if kind == "adam":
        cpu_kernel.adam_step(params, grads, exp_avgs, exp_avg_sqs, **scalars, step_size=1e-2, decay=1e-3)
    elif kind == "haar":
        cpu_kernel.haar_step(params, grads, exp_avgs, exp_avg_sqs, prev, level, **scalars, step_alpha=1e-2,
                             gamma=limiter, decay=1e-3)
    else:
        cpu_kernel.dwt_step(params, grads, exp_avgs, exp_avg_sqs, prev, wavelet, level, **scalars, step_alpha=1e-2,
                            gamma=limiter, decay=1e-3)


def corrupt(rng: random.Random, kind, tensors):
    """One random corruption of the argument lists; returns its description."""
    params, grads, exp_avgs, exp_avg_sqs, prev = tensors
    lists = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if prev:
        lists["prev_norms"] = prev
    name = rng.choice(sorted(lists))
    target = lists[name]
    i = rng.randrange(len(target))
    t = target[i]
    how = rng.choice(["shape", "dtype", "layout", "count"] + (["rank"] if t.dim() else []))
    if how == "shape":
        shape = list(t.shape) or [1]
        d = rng.randrange(len(shape))
        shape[d] += rng.choice([1, 2, 5]) if shape[d] < 2 or rng.random() < 0.5 else -1
        target[i] = torch.zeros(shape)
    elif how == "dtype":
        target[i] = t.to(rng.choice([torch.float64, torch.bfloat16, torch.float16]))
    elif how == "layout":
        if t.dim() < 2 or t.shape[0] < 2 or t.shape[1] < 2:
            target[i] = torch.zeros(*t.shape, 2)[..., 0]  # strided view
            if target[i].is_contiguous():
                target[i] = torch.zeros(list(t.shape) + [1])  # extra dim
        else:
            target[i] = t.t().contiguous().t()
    elif how == "count":
        if rng.random() < 0.5 and len(target) > 1:
            del target[i]
        else:
            target.append(t.clone())
    else:
        target[i] = torch.zeros(1, 1, 1)
    return f"{name}[{i}] {how}"


def test_kernel_entries_fuzz():
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    valid = rejected = 0
    for _ in range(300):
        case = random_case(rng)
        kind, wavelet, level, shape, count, limiter = case
        tensors = tensors_for(*case, gen)
        if rng.random() < 0.4:  # a valid call: the same as the torch code (fp32, eps = 0.1)
            reference = [[t.clone() for t in ts] if ts else ts for ts in tensors]
            call(kind, wavelet, level, limiter, *tensors)
            torch_step(kind, wavelet, level, limiter, *reference)
            for got, want in zip(tensors, reference):
                for a, b in zip(got or [], want or []):
                    torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=str(case))
            valid += 1
            continue
        what = corrupt(rng, kind, tensors)
        snapshot = [[t.clone() for t in ts] if ts else ts for ts in tensors]
        with pytest.raises(ValueError):
            call(kind, wavelet, level, limiter, *tensors)
            pytest.fail(f"{case}: {what} was accepted")
        for got, want in zip(tensors, snapshot):
            for a, b in zip(got or [], want or []):
                assert torch.equal(a, b), (case, what)  # nothing written
        rejected += 1
    assert valid > 50 and rejected > 100


def torch_step(kind, wavelet, level, limiter, params, grads, exp_avgs, exp_avg_sqs, prev):
    """The same update through the torch code of gwt.optim.adamw."""
    from gwt.optim import adamw
    from gwt.wavelets import RowTransform

    step_size, decay = torch.tensor(1e-2, dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64)
    if kind == "adam":
        adamw.adam_group(params, grads, exp_avgs, exp_avg_sqs, step_size, decay, 0.9, 0.999, 0.1)
    elif kind == "haar":
        adamw.gwt_haar_group(params, grads, exp_avgs, exp_avg_sqs, prev, step_size, decay, 0.9, 0.999, 0.1, 1.0,
                             limiter, level)
    else:
        for i, p in enumerate(params):
            adamw.gwt_general_step(p, grads[i], exp_avgs[i], exp_avg_sqs[i], prev[i] if prev else None, step_size,
                                   decay, 0.9, 0.999, 0.1, 1.0, limiter, RowTransform(p.shape[-1], wavelet, level))


def test_loaded_state_of_another_shape_never_reaches_a_kernel():
    """Random (shape, wavelet, level) saved, random other shape loaded: either the state shapes
    agree (then the step runs and stays finite) or load_state_dict raises naming both shapes."""
    rng = random.Random(99)
    refused = 0
    for _ in range(120):
        kind, wavelet, level, shape, _, limiter = random_case(rng)
        other = (rng.randint(1, 6), rng.randint(2, 70))
        group = {"wavelet": wavelet, "level": level, "limiter": limiter}
        source = torch.nn.Parameter(torch.randn(shape))
        opt = GWTAdamW([{"params": [source], **group}], backend="cpu")
        source.grad = torch.randn(shape)
        opt.step()
        target = torch.nn.Parameter(torch.randn(other))
        try:
            fresh = GWTAdamW([{"params": [target], **group}], backend="cpu")
        except ValueError:
            continue  # level too deep for the other shape: refused at construction
        want = fresh._expected_state(target, fresh.param_groups[0])["exp_avg"].shape
        have = opt.state[source]["exp_avg"].shape
        if want == have:
            fresh.load_state_dict(opt.state_dict())
            target.grad = torch.randn(other)
            fresh.step()
            assert torch.isfinite(target).all()
        else:
            with pytest.raises(ValueError, match=rf"has shape {tuple(have)}.*needs {tuple(want)}".replace("(", r"\(")
                               .replace(")", r"\)")):
                fresh.load_state_dict(opt.state_dict())
            assert not fresh.state
            refused += 1
    assert refused > 50
