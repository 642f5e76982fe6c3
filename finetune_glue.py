"""Fine-tune an encoder on one GLUE task with GWT or a baseline optimizer (the paper's Tables 3, A3).

Defaults are the paper's protocol (Appendix A.2): RoBERTa-base; GWT-Adam on every Linear layer
of the encoder, Haar level 2, alpha 2; batch 16 (CoLA 32); 30 epochs; max length 512; the Haar-2
learning rate of Table A3 per task; linear decay without warm-up; seed 1234; an evaluation at the
end of every epoch. Examples (Hydra overrides; every key is in configs/finetune_glue.yaml):

    python finetune_glue.py task=rte                                  # Table 3 cell: RoBERTa-base, Haar-2
    python finetune_glue.py task=mrpc optimizer=galore                 # GaLore-1/4, scale 2
    python finetune_glue.py task=cola optimizer=adamw                  # full-rank AdamW
    python finetune_glue.py task=sst2 data.dir=null                    # GLUE from the hub (nyu-mll/glue)
    python finetune_glue.py experiment=table3/mnli_haar2               # one Table 3 cell
    python finetune_glue.py -m experiment=tableA3                      # Table A3 learning-rate grid
    python finetune_glue.py task=stsb model=minilm_l6 trainer.epochs=1 trainer.max_length=128   # offline, CPU
    python finetune_glue.py task=rte model=roberta_tiny trainer.max_steps=4 logger=none          # smoke test
    python finetune_glue.py task=rte output_dir=runs/rte resume=true   # continue after SIGTERM / SIGUSR1
    torchrun --nproc_per_node 2 finetune_glue.py task=rte              # 2 processes (or accelerate launch)

Each run writes into ``output_dir``: config.yaml, metrics.jsonl (one line per logged step and per
evaluation), checkpoints/step_XXXXXXXX/ and, when finished, result.json with the metrics of every
evaluation, the final one and the best one (``score`` is the paper's number for the task).
"""
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from gwt_lab.data.glue import collate_glue, get_task, load_glue, tokenize_glue
from gwt.memory import optimizer_state_bytes
from gwt_lab.metrics import SCORE_KEYS, glue_eval_metrics
from gwt_lab.models import build_glue_model
from gwt.optim import build_optimizer, optimizer_options
from gwt_lab.train import (SCHEDULE_NAMES, CheckpointManager, MetricsLogger, StopSignal, build_scheduler,
                       check_output_dir, git_commit, gradient_accumulation_steps, peak_memory_bytes,
                       progress_bar, reset_peak_memory, rng_state, seed_everything, set_rng_state,
                       truncate_metrics, write_result)
from gwt_lab.train.epochs import epoch_batches, length_sorted_batches, micro_batches

PRECISIONS = {"fp32": "no", "bf16": "bf16"}  # precision -> Accelerate mixed_precision
LOGGERS = ("none", "wandb")


def fail(message: str) -> None:
    """Bad input: one message on stderr, exit status 2, nothing written (as train_llama.py)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_config(cfg: DictConfig, world: int) -> int:
    """Checks that need neither data nor model; returns the gradient-accumulation steps."""
    task = get_task(cfg.task.name)
    if cfg.task.num_labels != task.num_labels or cfg.task.metric != SCORE_KEYS[task.name]:
        raise ValueError(f"task.num_labels={cfg.task.num_labels} / task.metric={cfg.task.metric!r} do not match "
                         f"GLUE {task.name!r}: expected {task.num_labels} / {SCORE_KEYS[task.name]!r}")
    options = set(cfg.optimizer) - {"name"}
    valid = optimizer_options(cfg.optimizer.name)  # an unknown name lists the registered optimizers
    if options - set(valid):
        raise ValueError(f"optimizer.{sorted(options - set(valid))[0]} is not an option of optimizer "
                         f"{cfg.optimizer.name!r}; valid: {', '.join(valid)}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision={cfg.precision!r} is unknown; choose one of {list(PRECISIONS)}")
    if cfg.logger.name not in LOGGERS:
        raise ValueError(f"logger={cfg.logger.name!r} is unknown; choose one of {list(LOGGERS)}")
    t = cfg.trainer
    if t.scheduler not in SCHEDULE_NAMES:
        raise ValueError(f"trainer.scheduler={t.scheduler!r} is unknown; choose one of {list(SCHEDULE_NAMES)}")
    for key in ("epochs", "max_length", "eval_batch_size", "log_every", "keep_last_checkpoints"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ValueError(f"trainer.{key}={t[key]!r} must be a positive integer")
    for key in ("max_steps", "eval_every", "checkpoint_every", "micro_batch_size"):
        if t[key] is not None and (not isinstance(t[key], int) or t[key] < 1):
            raise ValueError(f"trainer.{key}={t[key]!r} must be a positive integer or null")
    if t.micro_batch_size is None and t.total_batch_size % world:
        raise ValueError(f"trainer.total_batch_size={t.total_batch_size} is not divisible by the {world} processes; "
                         "set trainer.micro_batch_size or change the number of processes")
    return gradient_accumulation_steps(t.total_batch_size, t.micro_batch_size or t.total_batch_size // world, world)


def init_wandb(cfg: DictConfig, run_id: str | None):
    import wandb

    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                      tags=list(cfg.logger.tags), name=cfg.run_name, mode=cfg.logger.mode, dir=cfg.output_dir,
                      config=OmegaConf.to_container(cfg, resolve=True), id=run_id, resume="allow")


def tokenized_splits(cfg: DictConfig, splits: dict, tokenizer) -> tuple[list[dict], dict[str, list[dict]]]:
    """Tokenized rows (lists of dicts) of the training split and of each evaluation split."""
    train = splits["train"]
    if cfg.data.max_train_examples:  # a seeded random subset, for reduced-scale runs
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        train = train.select(sorted(keep[: cfg.data.max_train_examples].tolist()))
    evals = {s: d for s, d in splits.items() if s != "train"}
    if cfg.data.max_eval_examples:
        evals = {s: d.select(range(min(len(d), cfg.data.max_eval_examples))) for s, d in evals.items()}
    rows = lambda d: tokenize_glue(d, tokenizer, cfg.trainer.max_length).to_list()  # noqa: E731
    return rows(train), {s: rows(d) for s, d in evals.items()}


@torch.no_grad()
def evaluate(model, eval_rows: dict[str, list[dict]], cfg, pad_id: int, acc) -> dict[str, float]:
    """The task's metrics on every evaluation split (examples shared out over the processes)."""
    from accelerate.utils import gather_object

    model.eval()
    split_preds = {}
    for split, rows in eval_rows.items():
        preds, labels = [], []
        for idx in length_sorted_batches([len(r["input_ids"]) for r in rows], cfg.trainer.eval_batch_size,
                                         acc.process_index, acc.num_processes):
            batch = {k: v.to(acc.device) for k, v in collate_glue([rows[i] for i in idx], pad_id).items()}
            with acc.autocast():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            preds += (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()
            labels += batch["labels"].tolist()
        split_preds[split] = (gather_object(preds), gather_object(labels))
    model.train()
    return glue_eval_metrics(cfg.task.name, split_preds)


def run(cfg: DictConfig) -> dict | None:
    from accelerate import Accelerator

    # ---------------------------------------------------------------- checks (nothing written yet)
    acc = Accelerator(mixed_precision=PRECISIONS.get(cfg.precision, "no"), cpu=cfg.cpu)
    is_main, world, t = acc.is_main_process, acc.num_processes, cfg.trainer
    try:
        accum = check_config(cfg, world)
        out_state = check_output_dir(cfg.output_dir, cfg.resume)
        splits = load_glue(cfg.task.name, cfg.data.dir)  # a missing file fails here, before the model loads
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    output_dir, micro = Path(cfg.output_dir), t.total_batch_size // (world * accum)
    commit = git_commit()  # the code version this run started from (recorded in result.json)
    if out_state.finished:
        acc.print(f"{output_dir}/result.json exists: this run already finished; nothing to do")
        return None

    # ---------------------------------------------------------------- model, data, optimizer, schedule
    seed_everything(cfg.seed)  # before the model: roberta_tiny and every new head are initialised here
    try:
        model, tokenizer = build_glue_model(num_labels=cfg.task.num_labels, **cfg.model)
    except (ValueError, OSError, ImportError) as err:
        fail(f"model={cfg.model.name}: {str(err).splitlines()[0]}")
    train_rows, eval_rows = tokenized_splits(cfg, splits, tokenizer)
    steps_per_epoch = len(train_rows) // t.total_batch_size
    if steps_per_epoch < 1:
        fail(f"{len(train_rows)} training examples are fewer than trainer.total_batch_size={t.total_batch_size}")
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    model = model.to(acc.device)
    try:  # bad optimizer settings (wavelet level too deep, bad rank, ...) fail here, before training
        optimizer = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer, resolve=True))
    except (ValueError, TypeError) as err:
        fail(f"optimizer={cfg.optimizer.name}: {err}")
    scheduler = build_scheduler(optimizer, t.scheduler, total_steps, t.warmup_steps)
    model = acc.prepare(model)  # DDP over N processes; autocast for precision=bf16
    n_params = sum(p.numel() for p in acc.unwrap_model(model).parameters())
    acc.print(f"{cfg.task.name}: {len(train_rows)} training examples, {steps_per_epoch} steps per epoch, "
              f"{total_steps} steps | {world} process(es) x micro-batch {micro} x {accum} accumulation = "
              f"{t.total_batch_size} examples per step | model {cfg.model.name} {n_params / 1e6:.1f}M parameters | "
              f"optimizer {cfg.optimizer.name} lr {cfg.optimizer.lr:g} | device {acc.device}, {cfg.precision}")

    # ---------------------------------------------------------------- resume (the data position follows from the step)
    ckpt = CheckpointManager(output_dir / "checkpoints", t.keep_last_checkpoints, acc.process_index, world,
                             barrier=acc.wait_for_everyone)
    step, history, wandb_id = 0, [], None
    if cfg.resume and out_state.latest_checkpoint is not None:
        shared, local, meta = ckpt.load(out_state.latest_checkpoint)
        acc.unwrap_model(model).load_state_dict(shared["model"])
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        set_rng_state(local["rng"])
        step, history, wandb_id = meta["step"], meta["history"], meta.get("wandb_id")
        acc.print(f"resumed from {out_state.latest_checkpoint} at step {step}")
    elif cfg.resume:
        acc.print(f"resume=true but {output_dir} has no checkpoint: starting from step 0")

    # ---------------------------------------------------------------- output folder, loggers
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        truncate_metrics(output_dir / "metrics.jsonl", step)  # drop lines logged after the checkpoint
    logger = MetricsLogger(output_dir / "metrics.jsonl", enabled=is_main)
    wandb_run = init_wandb(cfg, wandb_id) if is_main and cfg.logger.name == "wandb" else None
    if wandb_run is not None:
        logger.add_sink(lambda record: wandb_run.log(record, step=record["step"]))

    def save(step_now: int) -> Path:
        shared = {"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict()}
        meta = {"history": history, "wandb_id": wandb_run.id if wandb_run is not None else None}
        return ckpt.save(step_now, shared, {"rng": rng_state()}, meta)

    def evaluate_and_log() -> None:
        scores = evaluate(model, eval_rows, cfg, tokenizer.pad_token_id, acc)
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), **scores})
        logger.log({"step": step, "epoch": history[-1]["epoch"], **{f"eval_{k}": v for k, v in scores.items()}})
        acc.print(f"\nstep {step} (epoch {history[-1]['epoch']:g}): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))

    # ---------------------------------------------------------------- training loop
    reset_peak_memory(acc.device)
    bar = progress_bar(total_steps, initial=step, enabled=is_main, desc=cfg.task.name)
    order, order_epoch, train_time, session_examples = None, None, 0.0, 0
    with StopSignal() as stop:
        while step < total_steps:
            t0 = time.perf_counter()
            # (1) this step's examples: epoch and position follow from the step alone
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_batches(len(train_rows), t.total_batch_size, cfg.seed, epoch), epoch
            parts = micro_batches(order[pos], acc.process_index, world, micro)
            # (2) forward / backward over the micro-batches (gradients synchronised on the last one)
            loss_total, step_tokens = torch.zeros((), device=acc.device), 0
            for i, ids in enumerate(parts):
                batch = {k: v.to(acc.device) for k, v in collate_glue([train_rows[j] for j in ids],
                                                                      tokenizer.pad_token_id).items()}
                with acc.no_sync(model) if i < len(parts) - 1 else nullcontext(), acc.autocast():
                    loss = model(**batch).loss / len(parts)  # DDP averages over processes
                acc.backward(loss)
                loss_total += loss.detach()
                step_tokens += int(batch["attention_mask"].sum())
            loss = acc.reduce(loss_total, reduction="mean").item()
            if not math.isfinite(loss):  # stop before the bad update; the last checkpoint stays the good one
                bar.close()
                acc.print(f"error: non-finite training loss {loss} at step {step + 1}; stopping. The last good "
                          f"checkpoint (if any) is in {output_dir / 'checkpoints'}", file=sys.stderr)
                raise SystemExit(1)
            # (3) update
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_time += dt
            session_examples += t.total_batch_size
            # (4) log, evaluate (every epoch end, or every eval_every steps, and at the end), checkpoint, stop
            if step % t.log_every == 0 or step == total_steps:
                logger.log({"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss, "lr": lr,
                            "examples_per_s": t.total_batch_size / dt, "tokens_per_s": step_tokens * world / dt})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{t.total_batch_size / dt:.1f}")
            epoch_end = step % steps_per_epoch == 0
            if (step % t.eval_every == 0 if t.eval_every else epoch_end) or step == total_steps:
                evaluate_and_log()
            stop_now = acc.reduce(torch.tensor(float(stop.requested), device=acc.device), reduction="sum").item() > 0
            periodic = step % t.checkpoint_every == 0 if t.checkpoint_every else epoch_end
            if (periodic or stop_now) and step < total_steps:
                path = save(step)
                if stop_now:
                    bar.close()
                    acc.print(f"stopped by signal at step {step}; checkpoint {path}; continue with resume=true")
                    logger.close()
                    raise SystemExit(stop.exit_code() or 143)
    bar.close()

    # ---------------------------------------------------------------- result
    best = max(history, key=lambda e: e["score"])
    metrics = {**{k: v for k, v in history[-1].items() if k not in ("step", "epoch")}, "steps": step,
               "epochs": round(step / steps_per_epoch, 4), "final": history[-1], "best": best,
               "per_epoch": history, "train_examples": len(train_rows),
               "train_examples_per_s": session_examples / max(train_time, 1e-9), "train_time_s": train_time,
               "optimizer_state_bytes": optimizer_state_bytes(optimizer), **peak_memory_bytes(acc.device),
               "num_parameters": n_params, "world_size": world}
    if is_main:
        command = " ".join(["python", os.path.basename(sys.argv[0])] + sys.argv[1:])
        path = write_result(output_dir, OmegaConf.to_container(cfg, resolve=True), metrics, commit=commit,
                            command=command)
        print(f"{cfg.task.name} {cfg.task.metric}: final {history[-1]['score']:.2f}, best {best['score']:.2f} "
              f"(step {best['step']}) after {step} steps\nresult: {path}")
    logger.close()
    if wandb_run is not None:
        wandb_run.summary.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        wandb_run.finish()
    acc.end_training()
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune_glue")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
