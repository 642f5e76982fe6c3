"""Pre-train LLaMA on C4 with AdamW, GWT, GaLore, ... (the paper's Tables 1, 2, 4; Figures 2, 3, 5, 6).

Examples (Hydra overrides; see configs/train_llama.yaml and README.md for every key):

    # the README's main job: a short GWT run on the local C4 sample (CPU, a few minutes)
    python train_llama.py experiment=demo
    # one Table 1 cell on one GPU / on 8 GPUs of a node
    python train_llama.py experiment=table1/llama_60m_haar2 output_dir=runs/60m_haar2
    accelerate launch --num_processes 8 train_llama.py experiment=table1/llama_350m_db2 output_dir=runs/350m_db2
    # any combination, e.g. 3-level Haar on local C4 shards
    python train_llama.py model=llama_130m optimizer=gwt optimizer.level=3 data=c4_local data.dir=/data/c4/en
    # continue a run stopped by SIGTERM / SIGUSR1 (or a crash) exactly where it stopped
    python train_llama.py experiment=table1/llama_60m_haar2 output_dir=runs/60m_haar2 resume=true
    # 2 CPU processes (gloo), e.g. for testing
    torchrun --nproc_per_node 2 train_llama.py model=llama_tiny data=c4_local precision=fp32 cpu=true ...

Each run writes into ``output_dir``: config.yaml, metrics.jsonl (one line per logged step and
per evaluation), checkpoints/step_XXXXXXXX/ and, when finished, result.json.
"""
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf

from gwt_lab.data.lm import TextSource, check_source, epoch_documents, eval_batches, load_tokenizer, TokenStream
from gwt.memory import optimizer_state_bytes
from gwt_lab.models import LLAMA_ARCH_KEYS, build_llama, count_parameters
from gwt.optim import build_optimizer
from gwt_lab.train import (CheckpointManager, MetricsLogger, StopSignal, build_scheduler, causal_lm_loss_sum,
                       check_output_dir, count_targets, git_commit, gradient_accumulation_steps, peak_memory_bytes,
                       progress_bar, reset_peak_memory, rng_state, seed_everything, set_rng_state,
                       truncate_metrics, warmup_steps_from, write_result)

PRECISIONS = {"bf16": "bf16", "pure_bf16": "no", "fp32": "no"}  # precision -> Accelerate mixed_precision
LOGGERS = ("none", "wandb")


def fail(message: str) -> None:
    """Bad input: one message on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_config(cfg: DictConfig) -> None:
    """Checks that need neither data nor model (run before anything is built or written)."""
    if cfg.precision not in PRECISIONS:
        fail(f"precision={cfg.precision!r} is unknown; choose one of {list(PRECISIONS)}")
    if cfg.logger.name not in LOGGERS:
        fail(f"logger={cfg.logger.name!r} is unknown; choose one of {list(LOGGERS)}")
    if cfg.trainer.seq_len > cfg.model.max_position_embeddings:
        fail(f"trainer.seq_len={cfg.trainer.seq_len} exceeds model.max_position_embeddings="
             f"{cfg.model.max_position_embeddings}")
    for key in ("max_steps", "seq_len", "eval_every", "eval_tokens", "log_every"):
        if not isinstance(cfg.trainer[key], int) or cfg.trainer[key] < 1:
            fail(f"trainer.{key}={cfg.trainer[key]!r} must be a positive integer")


def init_wandb(cfg: DictConfig, output_dir: Path, run_id: str | None):
    """A W&B run (offline unless logger.mode=online), resumed when the checkpoint knows its id."""
    import wandb

    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                      tags=list(cfg.logger.tags), name=cfg.run_name, mode=cfg.logger.mode, dir=str(output_dir),
                      config=OmegaConf.to_container(cfg, resolve=True), id=run_id, resume="allow")


def train(cfg: DictConfig) -> dict | None:
    """Run one pre-training job described by a composed config; returns the final metrics (None if
    the run had already finished). Bad input exits with status 2 before anything is written."""
    # ---------------------------------------------------------------- checks (nothing written yet)
    check_config(cfg)
    code_version = git_commit()  # recorded in result.json: the code this run started with
    acc = Accelerator(mixed_precision=PRECISIONS[cfg.precision], cpu=cfg.cpu)
    is_main, world = acc.is_main_process, acc.num_processes
    t = cfg.trainer
    try:
        accum = gradient_accumulation_steps(t.total_batch_size, t.micro_batch_size, world)
        source = TextSource(**{k: cfg.data[k] for k in TextSource.__dataclass_fields__})
        check_source(source)
        tokenizer = load_tokenizer(cfg.tokenizer)
        out_state = check_output_dir(cfg.output_dir, cfg.resume)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    output_dir = Path(cfg.output_dir)
    if out_state.finished:
        acc.print(f"{output_dir}/result.json exists: this run already finished; nothing to do")
        return

    # ---------------------------------------------------------------- model, optimizer, schedule
    seed_everything(cfg.seed)
    model = build_llama(**{k: cfg.model[k] for k in LLAMA_ARCH_KEYS}, seed=cfg.seed)
    if cfg.precision == "pure_bf16":
        model = model.to(torch.bfloat16)  # released runs: weights, grads and states in bf16
    model = model.to(acc.device)
    try:  # bad optimizer settings (unknown option, wavelet level too deep, ...) fail here, before training
        optimizer = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer, resolve=True))
    except (ValueError, TypeError) as err:
        fail(f"optimizer={cfg.optimizer.name}: {err}")
    try:
        warmup = warmup_steps_from(t.max_steps, t.warmup_steps, t.warmup_ratio)
        scheduler = build_scheduler(optimizer, t.scheduler, t.max_steps, warmup, t.min_lr_ratio)
    except ValueError as err:
        fail(f"trainer.scheduler: {err}")
    if cfg.compile:
        model = torch.compile(model)
    model = acc.prepare(model)  # DDP over N processes; autocast for precision=bf16

    tokens_per_step = t.total_batch_size * t.seq_len
    n_params = count_parameters(acc.unwrap_model(model))
    acc.print(f"model {cfg.model.name}: {n_params['total'] / 1e6:.1f}M parameters "
              f"({n_params['non_embedding'] / 1e6:.1f}M non-embedding) | optimizer {cfg.optimizer.name} | "
              f"{world} process(es) x micro-batch {t.micro_batch_size} x {accum} accumulation = {t.total_batch_size} "
              f"sequences = {tokens_per_step:,} tokens per step | {t.max_steps} steps, {warmup} warm-up | "
              f"device {acc.device}, precision {cfg.precision}")

    # ---------------------------------------------------------------- resume
    ckpt = CheckpointManager(output_dir / "checkpoints", t.keep_last_checkpoints, acc.process_index, world,
                             barrier=acc.wait_for_everyone)
    step, tokens_seen, data_state, wandb_id = 0, 0, None, None
    if cfg.resume and out_state.latest_checkpoint is not None:
        shared, local, meta = ckpt.load(out_state.latest_checkpoint)
        acc.unwrap_model(model).load_state_dict(shared["model"])
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        step, tokens_seen, wandb_id = meta["step"], meta["tokens_seen"], meta.get("wandb_id")
        set_rng_state(local["rng"])
        data_state = local["data"]
        acc.print(f"resumed from {out_state.latest_checkpoint} at step {step}")
    elif cfg.resume:
        acc.print(f"resume=true but {output_dir} has no checkpoint: starting from step 0")

    # ---------------------------------------------------------------- data
    vocab = cfg.model.vocab_size
    train_docs = epoch_documents(source, "train", cfg.data.shuffle_seed, cfg.data.shuffle_buffer,
                                 acc.process_index, world)
    stream = TokenStream(train_docs, tokenizer, t.seq_len, pack=cfg.data.pack, text_key=source.text_key,
                         vocab_size=vocab, state=data_state)
    val_docs = epoch_documents(source, "validation", cfg.data.shuffle_seed, cfg.data.shuffle_buffer,
                               acc.process_index, world)(0)
    val_batches = eval_batches(val_docs, tokenizer, t.seq_len, t.eval_batch_size or t.micro_batch_size,
                               math.ceil(t.eval_tokens / world), source.text_key, vocab, cfg.data.pack)

    def evaluate() -> dict:
        """Per-token mean loss over the cached validation batches of every rank."""
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=acc.device)  # [loss sum, tokens]
        with torch.no_grad():
            for batch in val_batches:
                labels = batch["labels"].to(acc.device)
                logits = model(input_ids=batch["input_ids"].to(acc.device)).logits
                loss_sum, count = causal_lm_loss_sum(logits, labels)
                totals += torch.stack([loss_sum.double(), count.double()])
        totals = acc.reduce(totals, reduction="sum")
        model.train()
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0)), "eval_tokens": int(totals[1].item())}

    # ---------------------------------------------------------------- output folder, loggers
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        truncate_metrics(output_dir / "metrics.jsonl", step)  # drop lines logged after the checkpoint
    logger = MetricsLogger(output_dir / "metrics.jsonl", enabled=is_main)
    wandb_run = init_wandb(cfg, output_dir, wandb_id) if is_main and cfg.logger.name == "wandb" else None
    if wandb_run is not None:
        logger.add_sink(lambda record: wandb_run.log(record, step=record["step"]))

    def save(step_now: int) -> Path:
        shared = {"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict()}
        local = {"rng": rng_state(), "data": stream.state_dict()}
        meta = {"tokens_seen": tokens_seen, "wandb_id": wandb_run.id if wandb_run is not None else None}
        return ckpt.save(step_now, shared, local, meta)

    # ---------------------------------------------------------------- training loop
    reset_peak_memory(acc.device)
    bar = progress_bar(t.max_steps, initial=step, enabled=is_main)
    train_time, session_tokens, last_eval, last_loss = 0.0, 0, None, float("nan")
    with StopSignal() as stop:
        while step < t.max_steps:
            t0 = time.perf_counter()
            # (1) the step's micro-batches; the loss is normalised by the step's global target count
            micro = [stream.next_batch(t.micro_batch_size) for _ in range(accum)]
            counts = torch.tensor([[count_targets(b["labels"]).item(), (b["labels"] != -100).sum().item()]
                                   for b in micro], dtype=torch.float64).sum(0)  # [targets, non-pad tokens]
            global_targets, step_tokens = acc.reduce(counts.to(acc.device), reduction="sum").tolist()
            # (2) forward / backward over the micro-batches (gradients synchronised on the last one)
            loss_total = torch.zeros((), dtype=torch.float64, device=acc.device)
            for i, batch in enumerate(micro):
                with acc.no_sync(model) if i < accum - 1 else nullcontext():
                    logits = model(input_ids=batch["input_ids"].to(acc.device)).logits
                    loss_sum, _ = causal_lm_loss_sum(logits, batch["labels"].to(acc.device))
                    acc.backward(loss_sum * (world / max(global_targets, 1.0)))  # DDP averages over ranks
                    loss_total += loss_sum.detach().double()
            loss = acc.reduce(loss_total, reduction="sum").item() / max(global_targets, 1.0)
            if not math.isfinite(loss):  # stop before the bad update; the last checkpoint stays the good one
                bar.close()
                acc.print(f"error: non-finite training loss {loss} at step {step + 1}; stopping. The last good "
                          f"checkpoint (if any) is in {output_dir / 'checkpoints'}", file=sys.stderr)
                raise SystemExit(1)
            # (3) update
            lr = scheduler.get_last_lr()[0]
            if t.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += int(step_tokens)
            session_tokens += int(step_tokens)
            dt = time.perf_counter() - t0
            train_time += dt
            last_loss = loss
            # (4) log, evaluate, checkpoint, stop on signal
            if step % t.log_every == 0 or step == t.max_steps:
                logger.log({"step": step, "loss": loss, "lr": lr, "tokens_seen": tokens_seen,
                            "tokens_per_s": step_tokens / dt})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / dt:.0f}")
            if step % t.eval_every == 0 or step == t.max_steps:
                last_eval = {"step": step, **evaluate()}
                logger.log(last_eval)
                acc.print(f"\nstep {step}: eval_loss {last_eval['eval_loss']:.4f}, eval_ppl {last_eval['eval_ppl']:.2f}")
            stop_now = acc.reduce(torch.tensor(float(stop.requested), device=acc.device), reduction="sum").item() > 0
            if (t.checkpoint_every and step % t.checkpoint_every == 0) or (stop_now and step < t.max_steps):
                path = save(step)
                if stop_now and step < t.max_steps:
                    bar.close()
                    acc.print(f"stopped by signal at step {step}; checkpoint {path}; continue with resume=true")
                    logger.close()
                    raise SystemExit(stop.exit_code() or 143)
    bar.close()

    # ---------------------------------------------------------------- result
    metrics = {**{k: v for k, v in last_eval.items() if k != "step"}, "steps": step, "tokens_seen": tokens_seen,
               "final_train_loss": last_loss, "train_tokens_per_s": session_tokens / max(train_time, 1e-9),
               "train_time_s": train_time, "optimizer_state_bytes": optimizer_state_bytes(optimizer),
               **peak_memory_bytes(acc.device), "num_parameters": n_params["total"], "world_size": world}
    logger.close()
    if wandb_run is not None:
        wandb_run.summary.update(metrics)
        wandb_run.finish()
    if is_main:
        path = write_result(output_dir, OmegaConf.to_container(cfg, resolve=True), metrics, commit=code_version)
        print(f"validation perplexity {metrics['eval_ppl']:.2f} (loss {metrics['eval_loss']:.4f} on "
              f"{metrics['eval_tokens']:,} tokens) after {step} steps, {tokens_seen:,} tokens\nresult: {path}")
    acc.end_training()
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train_llama")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
