"""Pre-train LLaMA on C4 with AdamW, GWT, GaLore, ... (the paper's Tables 1, 2, 4; Figures 2, 3, 5, 6).

Examples (Hydra overrides; see configs/train_llama.yaml and README.md for every key):

    # the README's main job: a short GWT run on the local C4 sample (CPU, a few minutes)
    python train_llama.py experiment=demo
    # one Table 1 cell on one GPU / on 8 GPUs of a node
    python train_llama.py model=llama_60m method=haar2 output_dir=runs/60m_haar2
    accelerate launch --num_processes 8 train_llama.py model=llama_350m method=db2_2 output_dir=runs/350m_db2
    # any combination, e.g. 3-level Haar on local C4 shards
    python train_llama.py model=llama_130m optimizer=gwt optimizer.level=3 data=c4_local data.dir=/data/c4/en
    # continue a run stopped by SIGTERM / SIGUSR1 (or a crash) exactly where it stopped
    python train_llama.py model=llama_60m method=haar2 output_dir=runs/60m_haar2 resume=true
    # 2 CPU processes (gloo), e.g. for testing
    torchrun --nproc_per_node 2 train_llama.py model=llama_tiny data=c4_local precision=fp32 cpu=true ...
    # weights, gradients and optimizer states sharded by rows over 8 GPUs (FSDP2)
    torchrun --nproc_per_node 8 train_llama.py model=llama_1b method=haar2 distributed=fsdp2

Each run writes into ``output_dir``: config.yaml, metrics.jsonl (one line per logged step and
per evaluation), checkpoints/step_XXXXXXXX/ and, when finished, result.json.
"""
import math

import hydra
import torch
from omegaconf import DictConfig

from gwt_lab.config_checks import POSITIVE, POSITIVE_OR_NULL, FRACTION, ConfigError, Flag, Int, Number, Text
from gwt_lab.constants import IGNORE_INDEX
from gwt_lab.data.lm import (TextSource, TokenStream, check_source, epoch_documents, eval_batches, load_tokenizer,
                             open_documents)
from gwt_lab.distributed import prepare_model
from gwt_lab.loop import Task, build_checked_optimizer, build_checked_scheduler, run_training
from gwt_lab.models import build_causal_lm, causal_lm_arch
from gwt_lab.train import causal_lm_loss_sum, count_targets, gradient_accumulation_steps, warmup_steps_from


class Pretraining(Task):
    """Causal-LM pre-training of a decoder (LLaMA, Qwen2.5) on a stream of packed or padded documents."""

    name = "train"
    precisions = {"bf16": "bf16", "pure_bf16": "no", "fp32": "no"}  # precision -> Accelerate mixed_precision
    trainer_keys = {"max_steps": POSITIVE, "micro_batch_size": POSITIVE, "seq_len": POSITIVE,
                    "warmup_ratio": FRACTION, "min_lr_ratio": FRACTION, "eval_every": POSITIVE, "eval_tokens": POSITIVE,
                    "eval_batch_size": POSITIVE_OR_NULL, "checkpoint_every": Int(0)}
    data_keys = {**{key: Text(null=True) for key in TextSource.__dataclass_fields__}, "name": Text(),
                 "pack": Flag(), "shuffle_seed": Int(0, null=True), "shuffle_buffer": POSITIVE}
    checkpoint_final = True
    supports_fsdp2 = True

    def model_keys(self) -> dict:
        """The architecture's keys (``gwt_lab.models.causal_lm_arch``) and the model files' descriptive keys."""
        ints = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "max_position_embeddings")
        try:
            arch_keys = causal_lm_arch(self.cfg.model)[1]
        except ValueError as err:
            raise ConfigError(str(err)) from None
        kinds = {key: POSITIVE if key in ints else None for key in arch_keys}
        return {**kinds, "rms_norm_eps": Number(0.0, open_low=True), "initializer_range": Number(0.0),
                "tie_word_embeddings": Flag(), "name": Text(), "architecture": Text(), "paper_steps": POSITIVE,
                "paper_adam_lr": Number(0.0), "tokenizer": Text(null=True)}

    def check(self, acc) -> None:
        cfg, t = self.cfg, self.cfg.trainer
        if t.seq_len > cfg.model.max_position_embeddings:
            raise ConfigError(f"trainer.seq_len={t.seq_len} exceeds model.max_position_embeddings="
                              f"{cfg.model.max_position_embeddings}")
        self.accum = gradient_accumulation_steps(t.total_batch_size, t.micro_batch_size, acc.num_processes)
        self.micro = t.micro_batch_size
        self.source = TextSource(**{k: cfg.data[k] for k in TextSource.__dataclass_fields__})
        check_source(self.source)
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.acc = acc

    def build(self, acc) -> tuple:
        cfg, t = self.cfg, self.cfg.trainer
        model = build_causal_lm(cfg.model, seed=cfg.seed)
        if cfg.precision == "pure_bf16":
            model = model.to(torch.bfloat16)  # released runs: weights, grads and states in bf16
        model = model.to(acc.device)
        model = prepare_model(model, cfg, acc.device, acc.num_processes)  # activation checkpointing, FSDP2
        optimizer = build_checked_optimizer(model, cfg)
        self.warmup = warmup_steps_from(t.max_steps, t.warmup_steps, t.warmup_ratio)
        scheduler = build_checked_scheduler(optimizer, t, t.max_steps, self.warmup, t.min_lr_ratio)
        return model, optimizer, scheduler, t.max_steps

    def describe(self, n_params: dict) -> str:
        t = self.cfg.trainer
        return (f"model {self.cfg.model.name}: {n_params['total'] / 1e6:.1f}M parameters "
                f"({n_params['non_embedding'] / 1e6:.1f}M non-embedding), {self.warmup} warm-up steps | "
                f"{t.total_batch_size * t.seq_len:,} tokens per step; sequences:")

    def start(self, local: dict | None, meta: dict) -> None:
        cfg, t, acc, src = self.cfg, self.cfg.trainer, self.acc, self.source
        world = acc.num_processes
        train_docs = epoch_documents(src, "train", cfg.data.shuffle_seed, cfg.data.shuffle_buffer,
                                     acc.process_index, world)
        self.stream = TokenStream(train_docs, self.tokenizer, t.seq_len, pack=cfg.data.pack, text_key=src.text_key,
                                  vocab_size=cfg.model.vocab_size, state=local["data"] if local else None)
        val_docs = epoch_documents(src, "validation", cfg.data.shuffle_seed, cfg.data.shuffle_buffer,
                                   acc.process_index, world)(0)
        self.val_batches = eval_batches(val_docs, self.tokenizer, t.seq_len, t.eval_batch_size or t.micro_batch_size,
                                        math.ceil(t.eval_tokens / world), src.text_key, cfg.model.vocab_size,
                                        cfg.data.pack)

    def batches(self, step: int) -> list[dict]:
        return [self.stream.next_batch(self.cfg.trainer.micro_batch_size) for _ in range(self.accum)]

    def counts(self, batch: dict) -> tuple[float, float]:
        """(predicted tokens, non-padding tokens)."""
        return count_targets(batch["labels"]).item(), (batch["labels"] != IGNORE_INDEX).sum().item()

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"].to(self.acc.device)).logits
        return causal_lm_loss_sum(logits, batch["labels"].to(self.acc.device))[0]

    def evaluate(self, model, step: int) -> dict:
        """Per-token mean loss over the cached validation batches of every rank."""
        acc = self.acc
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=acc.device)  # [loss sum, tokens]
        with torch.no_grad():
            for batch in self.val_batches:
                labels = batch["labels"].to(acc.device)
                logits = model(input_ids=batch["input_ids"].to(acc.device)).logits
                loss_sum, count = causal_lm_loss_sum(logits, labels)
                totals += torch.stack([loss_sum.double(), count.double()])
        totals = acc.reduce(totals, reduction="sum")
        model.train()
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0)), "eval_tokens": int(totals[1].item())}

    def local_state(self) -> dict:
        return {"data": self.stream.state_dict()}

    def convert_local(self, previous: list[dict], rank: int, world: int) -> dict:
        """The data position at another number of processes. With ``data.pack=false`` every sequence is
        one document, and the document stream is split by rank by example index (document ``i`` goes to
        rank ``i mod world``) whenever the number of shards is not a multiple of the number of processes:
        then every process count sees the same global order, the ranks have consumed ``D`` documents in
        total, and rank ``r`` of the new run skips its first ``D / world`` documents. The global batch of
        each later step is the same documents as in an uninterrupted run; only the float summation order
        differs. Packed data (a per-rank token remainder) and shard-wise splits are refused."""
        old = len(previous)
        ask = f"resume with {old} process(es)"
        if self.cfg.data.pack:
            raise ValueError(f"data.pack=true: a checkpoint of {old} process(es) cannot resume on {world} (each rank's "
                             f"packing remainder belongs to its own document subset); {ask}")
        data = [p["data"] for p in previous]
        if len({d["epoch"] for d in data}) != 1:
            raise ValueError(f"the checkpoint's ranks are in different data epochs; {ask}")
        n_shards = open_documents(self.source, "train", None, 1).n_shards
        for n in (old, world):
            if n > 1 and n_shards % n == 0:
                raise ValueError(f"the training data has {n_shards} shards, split shard-wise over {n} processes (a "
                                 f"different document order per process count); {ask}")
        total = sum(int(d["docs"]) for d in data)
        if total % world:
            raise ValueError(f"{total} consumed documents do not split evenly over {world} processes; {ask}")
        return {"data": {**data[0], "docs": total // world, "buffer": []}}

    def result(self, last_eval: dict, common: dict) -> tuple[dict, str]:
        metrics = {**{k: v for k, v in last_eval.items() if k != "step"}, **common}
        return metrics, (f"validation perplexity {metrics['eval_ppl']:.2f} (loss {metrics['eval_loss']:.4f} on "
                         f"{metrics['eval_tokens']:,} tokens) after {metrics['steps']} steps, "
                         f"{metrics['tokens_seen']:,} tokens")


def train(cfg: DictConfig) -> dict | None:
    """Run one pre-training job described by a composed config; returns the final metrics (None if
    the run had already finished). Bad input exits with status 2 before anything is written."""
    return run_training(cfg, Pretraining(cfg))


if __name__ == "__main__":
    hydra.main(version_base="1.3", config_path="configs", config_name="train_llama")(train)()
