"""Test-wide settings: offline hub, W&B off, local data folders. The optimizers' default
backend never compiles on CPU; tests that compile ask for backend="compile"."""
import os
from pathlib import Path

import pytest
import torch

import gwt_lab  # noqa: F401  (registers the OmegaConf resolvers the configs use, e.g. ${run_suffix:})

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("GWT_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ.setdefault("GWT_TOKENIZER_DIR", str((ROOT / ".." / "shared" / "tokenizers").resolve()))


@pytest.fixture
def tiny_llama():
    """A 2-layer LLaMA with odd intermediate size (rows not divisible by 4 in down_proj)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(config)

