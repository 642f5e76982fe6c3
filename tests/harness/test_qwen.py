"""model=qwen2_5_tiny through train_llama.py (CPU, fp32, offline: the T5 tokenizer with a 4096-id
vocabulary stands in for the Qwen2.5 tokenizer, which is not available without the hub)."""
import pytest
import torch

import train_llama
from gwt_lab.models import build_causal_lm
from gwt_lab.train import read_metrics, read_result
from tests.helpers import compose_cfg, reset_accelerate

QWEN = ["model=qwen2_5_tiny", "model.vocab_size=4096", "tokenizer=t5-base", "optimizer=gwt"]


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def test_qwen_tiny_trains_with_gwt(tmp_path):
    out = tmp_path / "qwen"
    cfg = compose_cfg([*QWEN, f"output_dir={out}"])
    assert cfg.model.architecture == "qwen2"
    train_llama.train(cfg)
    lines = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    result = read_result(out)
    assert result["config"]["model"]["name"] == "qwen2_5_tiny"
    # the checkpoint is a Qwen2 (q/k/v biases, tied embedding), not a LLaMA with the same widths
    state = torch.load(sorted((out / "checkpoints").iterdir())[-1] / "model.pt", weights_only=True)
    assert "model.layers.0.self_attn.q_proj.bias" in state
    model = build_causal_lm(cfg.model)
    model.load_state_dict(state)
    # GWT keeps 1/4 of the moments of the targeted matrices: less than AdamW's 8 bytes per parameter
    metrics = result["metrics"]
    n_params = sum(p.numel() for p in model.parameters())
    assert 0 < metrics["optimizer_state_bytes"] < 8 * n_params and metrics["eval_ppl"] > 1


def test_missing_qwen_tokenizer_offline_is_one_clear_error(tmp_path):
    """Offline, without a local copy of the Qwen2.5 tokenizer: exit status 2 before any work, one
    line naming the tokenizer, nothing written."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT, TINY

    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GWT_TOKENIZER_DIR=str(tmp_path / "none"))
    overrides = [o for o in TINY if not o.startswith(("model=", "tokenizer=", "model.vocab_size"))]
    proc = subprocess.run([sys.executable, str(ROOT / "train_llama.py"), *overrides, "model=qwen2_5_tiny",
                           f"output_dir={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tokenizer='Qwen/Qwen2.5-0.5B' could not be loaded" in errors[0]
    assert not out.exists()
