"""Helpers shared by the test floors: a tiny LM loss for the library tests, the real
``train_llama`` config composed with tiny CPU overrides and the ``finetune_glue`` config for the
harness tests."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# llama_tiny on the local C4 sample, fp32 on CPU, a few 32-token steps. The vocabulary is cut to
# 4096 ids (rarer T5 ids become UNK) because the 32000-wide output layer dominates CPU time.
TINY = ["model=llama_tiny", "model.vocab_size=4096", "optimizer=adamw", "data=c4_local", "logger=none", "precision=fp32", "cpu=true",
        "tokenizer=t5-base", "trainer.max_steps=4", "trainer.total_batch_size=4", "trainer.micro_batch_size=2",
        "trainer.seq_len=32", "trainer.eval_every=2", "trainer.eval_tokens=400", "trainer.checkpoint_every=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script, args, nproc: int = 2, log_dir=None) -> list[str]:
    """The torchrun command line for ``script args`` on ``nproc`` processes and a free port; with
    ``log_dir``, each rank's output is also kept there (``--tee``)."""
    logs = [] if log_dir is None else ["--log-dir", str(log_dir), "--tee", "3"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), *logs, str(script), *map(str, args)]


def torchrun(script, args, log_dir, nproc: int = 2, env=None, timeout=None) -> subprocess.CompletedProcess:
    """``script args`` on ``nproc`` CPU processes through torchrun, on a free port, each rank's output
    also kept under ``log_dir`` (``--tee``). A failed run fails the test with every rank's last lines:
    the launcher's own summary says only that a rank died, not why. Python's fault handler is on, so
    a rank killed by a signal leaves its Python stack in those lines."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(torchrun_command(script, args, nproc, log_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        ranks = [f"--- {f.relative_to(log_dir)}\n{f.read_text(errors='replace')[-2500:]}"
                 for f in sorted(Path(log_dir).rglob("std*.log")) if f.stat().st_size]
        raise AssertionError(f"torchrun exit code {proc.returncode}\n" + "\n".join(ranks)
                             + f"\n--- launcher\n{proc.stderr[-1500:]}")
    return proc


def compose_cfg(overrides=(), base=TINY):
    """The primary config composed with ``base`` then ``overrides`` (later wins)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train_llama", overrides=list(base) + list(overrides))


def compose_glue_cfg(*overrides):
    """The ``finetune_glue`` primary config composed with ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("finetune_glue", overrides=list(overrides))


def reset_accelerate():
    """Accelerate keeps process-wide state; tests that build several runs in one process reset it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fresh_accelerate():
    """Accelerate state reset before and after a test (import it into a test module and mark the module
    ``pytestmark = pytest.mark.usefixtures("fresh_accelerate")``)."""
    reset_accelerate()
    yield
    reset_accelerate()


def lm_loss(model, seed: int = 0, batch: int = 2, length: int = 12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)
    return model(input_ids=ids, labels=ids).loss
