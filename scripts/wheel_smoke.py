"""Smoke test of an installed gwt-optim wheel (run by scripts/check_wheel.sh inside a fresh virtual
environment that holds only the wheel and its core dependencies, from a folder outside the repo).

  python wheel_smoke.py kernel     the C kernel compiles from the installed sources; a step runs on it
  python wheel_smoke.py nokernel   no C compiler: a warning, and the step runs on the torch path

Prints one line per check and exits non-zero at the first failure.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

#: The harness's dependencies (extra `train`), which a core install must not bring. The harness
#: package gwt_lab itself ships in the same wheel; without the extra it is present but unusable.
EXPERIMENT_STACK = ("hydra", "omegaconf", "accelerate", "wandb", "datasets", "transformers", "matplotlib",
                    "submitit")


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        sys.exit(1)


def step_once(wavelet: str):
    """Two GWT-AdamW steps on a fp32 CPU matrix; returns the code that ran them
    (``GWTAdamW.step_backends()``, e.g. ``{"haar@cpu": 1}``) and the warnings raised."""
    import torch

    from gwt import GWTAdamW

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 40))
    start = w.detach().clone()
    opt = GWTAdamW([w], lr=1e-2, wavelet=wavelet, level=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            w.grad = torch.randn_like(w)
            opt.step()
    check(bool((w.detach() != start).any()) and bool(torch.isfinite(w).all()),
          f"{wavelet} step changed the weights, all finite")
    return opt.step_backends(), caught


def main(mode: str) -> None:
    cache = Path(os.environ["GWT_CACHE_DIR"])  # set by the caller to an empty folder
    import gwt
    from gwt.optim import cpu_kernel

    installed = Path(gwt.__file__).resolve().parent
    check("site-packages" in installed.parts, f"gwt imported from the installed wheel ({installed})")
    sources = sorted(p.name for p in (installed / "csrc").glob("*.c"))
    check(sources == ["dwt_cpu.c", "haar_cpu.c"], f"wheel carries the C sources {sources}")
    present = [name for name in EXPERIMENT_STACK if importlib.util.find_spec(name) is not None]
    check(present == [], f"core install holds none of the experiment stack (found: {present})")
    check(not any(cache.iterdir()), f"kernel build cache {cache} starts empty")

    if mode == "kernel":
        for wavelet, kind in (("haar", "haar"), ("db2", "dwt")):
            ran, caught = step_once(wavelet)
            check(not [w for w in caught if "kernel" in str(w.message).lower()],
                  f"{wavelet}: no kernel warning")
            check(ran == {f"{kind}@cpu": 1}, f"{wavelet}: the step ran on the C kernel: {ran}")
        check(cpu_kernel.library() is not None, f"C kernel loaded (failure: {cpu_kernel.failure()})")
        built = sorted(p.name for p in cache.glob("*.so"))
        check(len(built) == 1, f"C kernel built from the installed sources into the empty cache: {built}")
    elif mode == "nokernel":
        ran, caught = step_once("haar")
        check(ran == {"haar@torch": 1}, f"the step ran on the torch code: {ran}")
        check(cpu_kernel.library() is None, f"no kernel without a compiler (failure: {cpu_kernel.failure()})")
        check(not list(cache.glob("*.so")), "nothing built")
        messages = [str(w.message) for w in caught]
        check(any("compiler" in m.lower() for m in messages),
              f"a warning names the missing compiler and the path that runs instead: {messages}")
    else:
        sys.exit(f"mode={mode!r} is not a mode; valid: kernel, nokernel")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
