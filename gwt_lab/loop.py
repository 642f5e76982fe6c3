"""One training loop for every entrypoint (``train_llama.py``, ``finetune_glue.py``).

An entrypoint describes its job as a :class:`Task` (what to build, this step's batches, the loss
as a ``(sum, count)`` pair, how to evaluate, what goes into the checkpoint and the result);
:func:`run_training` does the rest, the same way for every task:

1. checks, before anything is written: config keys, types and ranges (``gwt_lab.config_checks``),
   the task's own checks (data files, tokenizer, batch split), the output folder, and on
   ``resume=true`` the new config against the checkpoint's (keys outside
   :data:`MAY_CHANGE_ON_RESUME` must be equal). Bad input: one line on stderr, exit status 2.
2. model, optimizer and schedule; resume from the newest checkpoint (weights, optimizer,
   schedule, every RNG, the data position, the last evaluation).
3. the loop: micro-batches with gradient accumulation, the loss normalised by the step's global
   count (the same for ``distributed=ddp`` and ``distributed=fsdp2``, see ``gwt_lab.distributed``),
   optional gradient clipping, logging to ``metrics.jsonl`` (and W&B), evaluation,
   checkpoints, and a checkpoint + exit ``128 + signal`` on SIGTERM / SIGUSR1.
4. ``result.json`` with the resolved config, the code version, the command and the metrics.

Stops with a non-zero status: a non-finite training loss (exit 1, before the bad update) and
non-finite weights or optimizer state at a checkpoint (exit 1, nothing written); both name the
newest checkpoint, which holds finite values.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from gwt.memory import optimizer_state_bytes
from gwt.optim import build_optimizer, optimizer_options
from gwt_lab.config_checks import (POSITIVE, ConfigError, Flag, Int, Number, OneOf, Text, check_section,
                                   check_optimizer_values, check_resume_config, check_top_level, resolve_all)
from gwt_lab.models import count_parameters
from gwt_lab.train import (SCHEDULE_NAMES, CheckpointManager, MetricsLogger, StopSignal, build_scheduler,
                           check_output_dir, git_commit, latest_checkpoint, peak_memory_bytes, progress_bar,
                           reset_peak_memory, rng_state, seed_everything, set_rng_state, truncate_metrics,
                           write_result)
from gwt_lab.data.lm import DataError
from gwt_lab.distributed import (DISTRIBUTED_NAMES, SHARDED_DIR, check_distributed, clip_grad_norm, distributed_name,
                                 enable_activation_checkpointing, gather_list, load_sharded, local_state_bytes,
                                 end_process_group, sharded_state)
from gwt_lab.train.checkpoint import CheckpointError, CheckpointWriteError, read_meta
from gwt_lab.train.output_dir import lock_run_dir
from gwt_lab.train.safe_state import place_projectors

LOGGERS = ("none", "wandb")

# Keys that may differ between a run and its resumption (a key here also covers the keys below it).
# None of them changes the optimisation: where results are written and logged, how often the run
# logs, evaluates and checkpoints, how the same global batch is cut into micro-batches, whether the
# model or the optimizer step is compiled, and where the same data and tokenizer files are found.
MAY_CHANGE_ON_RESUME = ("output_dir", "resume", "run_name", "logger", "paths", "compile", "optimizer.compile",
                        "optimizer.backend",
                        "trainer.log_every", "trainer.eval_every", "trainer.eval_batch_size",
                        "trainer.checkpoint_every", "trainer.keep_last_checkpoints", "trainer.micro_batch_size",
                        "trainer.activation_checkpointing", "distributed.reshard_after_forward",
                        "data.dir", "tokenizer", "model.tokenizer", "model.pretrained")

# trainer keys every task has (a task adds its own in ``Task.trainer_keys``)
TRAINER_KEYS = {"total_batch_size": POSITIVE, "scheduler": OneOf(SCHEDULE_NAMES), "grad_clip": Number(0.0),
                "log_every": POSITIVE, "keep_last_checkpoints": POSITIVE, "checkpoint_every": Int(0, null=True),
                "eval_every": Int(null=True), "warmup_steps": Int(0, null=True),
                "activation_checkpointing": Flag()}
TOP_LEVEL = {"seed": Int(0), "resume": Flag(), "cpu": Flag(), "compile": Flag(), "tokenizer": Text(null=True),
             "output_dir": Text(), "run_name": Text()}


def fail(message) -> NoReturn:
    """Bad input: one line on stderr, exit status 2 (called before anything is written)."""
    lines = str(message).strip().splitlines() or ["invalid input"]
    print(f"error: {lines[0]}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def build_checked_optimizer(model, cfg: DictConfig):
    """``gwt.optim.build_optimizer`` from ``cfg.optimizer``; its errors as ``ConfigError`` naming the optimizer."""
    try:
        return build_optimizer(model, **OmegaConf.to_container(cfg.optimizer, resolve=True))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer={cfg.optimizer.name}: {err}") from None


def build_checked_scheduler(optimizer, trainer: DictConfig, total_steps: int, warmup_steps: int,
                            min_lr_ratio: float | None = None):
    """``build_scheduler`` for ``trainer.scheduler``; its errors as ``ConfigError`` naming the key."""
    try:
        return build_scheduler(optimizer, trainer.scheduler, total_steps, warmup_steps, min_lr_ratio)
    except ValueError as err:
        raise ConfigError(f"trainer.scheduler: {err}") from None


def finite_weights_and_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """True when every parameter and every floating-point optimizer state tensor is finite
    (one fused max-abs reduction per tensor; max-abs cannot overflow where a sum of squares would).
    Sharded (DTensor) tensors are checked on this rank's shard; the caller combines the ranks."""
    tensors = [p.detach() for p in model.parameters()]
    tensors += [v for state in optimizer.state.values() for v in state.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # DTensors: this rank's shard
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    by_device: dict = {}
    for norm in torch._foreach_norm(tensors, math.inf):
        by_device.setdefault(norm.device, []).append(norm.float())
    return all(bool(torch.isfinite(torch.stack(norms)).all()) for norms in by_device.values())


class Task:
    """What one kind of training job is; :func:`run_training` calls these hooks in this order.

    Class attributes: ``name`` (progress-bar label), ``precisions`` (config ``precision`` ->
    Accelerate ``mixed_precision``), ``trainer_keys`` / ``data_keys`` (key -> kind, see
    ``gwt_lab.config_checks``; together with :data:`TRAINER_KEYS` every key the section may hold),
    ``checkpoint_final`` (also checkpoint after the last step), ``supports_fsdp2`` (``build`` calls
    ``gwt_lab.distributed.prepare_model`` before building the optimizer). ``build`` sets ``steps_per_epoch``
    when the task has epochs (then ``eval_every`` / ``checkpoint_every`` null mean every epoch end).
    """

    name = "train"
    precisions: dict = {}
    trainer_keys: dict = {}
    data_keys: dict = {}
    checkpoint_final = False
    supports_fsdp2 = False
    steps_per_epoch: int | None = None

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def model_keys(self) -> dict:
        """Key -> kind of every key ``model.`` may hold."""
        raise NotImplementedError

    def check(self, acc) -> None:
        """Checks that need the process count or files (raise ValueError / FileNotFoundError)."""

    def build(self, acc) -> tuple:
        """``(model on acc.device, optimizer, scheduler, total_steps)``; called right after seeding."""
        raise NotImplementedError

    def describe(self, n_params: dict) -> str:
        """The start of the line printed before training (the loop adds the batch split, steps, optimizer,
        device); the task also sets ``micro`` and ``accum`` (micro-batch size, accumulation steps)."""
        raise NotImplementedError

    def start(self, local: dict | None, meta: dict) -> None:
        """Set up the data (and task state) from this rank's checkpoint state (``None`` when starting)."""

    def batches(self, step: int) -> list[dict]:
        """This process's micro-batches of optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    def counts(self, batch: dict) -> tuple[float, float]:
        """``(loss count, tokens)`` of a micro-batch, before its forward pass."""
        raise NotImplementedError

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        """Sum of the per-item losses of a micro-batch (normalised by the loop)."""
        raise NotImplementedError

    def position(self, step: int) -> dict:
        """Extra keys for the log lines at ``step`` (e.g. the epoch)."""
        return {}

    def evaluate(self, model, step: int) -> dict:
        """Evaluation metrics after ``step`` (the loop adds ``step`` and logs them)."""
        raise NotImplementedError

    def local_state(self) -> dict:
        """This rank's extra checkpoint state (e.g. a data position)."""
        return {}

    def convert_local(self, previous: list[dict], rank: int, world: int) -> dict:
        """This rank's checkpoint state at ``world`` processes from the ``previous`` ranks' states of a
        sharded checkpoint written by another number of processes (raise ValueError when impossible)."""
        raise ValueError(f"{self.name}: a checkpoint of {len(previous)} processes cannot resume on {world}; resume "
                         f"with {len(previous)} processes")

    def meta_state(self) -> dict:
        """Extra JSON state for the checkpoint's meta.json."""
        return {}

    def result(self, last_eval: dict, common: dict) -> tuple[dict, str]:
        """``(metrics for result.json, summary line)`` from the last evaluation and the loop's numbers."""
        raise NotImplementedError


def check_config(cfg: DictConfig, task: Task) -> None:
    """Types, ranges and key names of the whole config; raises ``ConfigError`` (nothing is built yet)."""
    resolve_all(cfg)
    check_top_level(cfg, {**TOP_LEVEL, "precision": OneOf(tuple(task.precisions))})
    check_section(cfg, "logger", {"name": OneOf(LOGGERS), "mode": None, "project": None, "entity": None,
                                  "group": None, "tags": None})
    check_section(cfg, "trainer", {**TRAINER_KEYS, **task.trainer_keys})
    check_section(cfg, "data", task.data_keys)
    if "distributed" in cfg:
        check_section(cfg, "distributed", {"name": OneOf(DISTRIBUTED_NAMES), "reshard_after_forward": Flag()})
    check_distributed(cfg, task.supports_fsdp2, f"{task.name} ({type(task).__name__})")
    model_keys = task.model_keys()
    if "tokenizer" in cfg.model and "tokenizer" not in model_keys:
        raise ConfigError(f"model.tokenizer={cfg.model.tokenizer!r} is not a config key here; set the tokenizer "
                          "with tokenizer=...")
    check_section(cfg, "model", model_keys)
    if "name" not in cfg.optimizer:
        raise ConfigError("optimizer.name is missing; choose an optimizer with optimizer=<name>")
    optimizer_options(cfg.optimizer.name)  # the registry's check: an unknown name lists the registered ones
    check_optimizer_values(cfg.optimizer)  # option names are checked by the registry when the optimizer is built


def _saved_config(checkpoint: Path, output_dir: Path) -> tuple[dict | None, str]:
    """The resolved config a checkpoint was written with (its meta.json, else the run's config.yaml)."""
    import yaml

    try:
        saved = read_meta(checkpoint).get("config")
        if isinstance(saved, dict):
            return saved, str(checkpoint)
    except CheckpointError:
        pass
    try:
        saved = yaml.safe_load((output_dir / "config.yaml").read_text())
        return (saved, str(output_dir / "config.yaml")) if isinstance(saved, dict) else (None, "")
    except (OSError, yaml.YAMLError):
        return None, ""


def _with_later_defaults(saved: dict, cfg: DictConfig) -> dict:
    """``saved`` completed with the values that runs written before a key existed used (``distributed``:
    ddp, ``trainer.activation_checkpointing``: false), where the new config has that key, so such runs
    still resume."""
    out = dict(saved)
    if "distributed" in cfg and "distributed" not in out:
        out["distributed"] = {"name": "ddp"}
    trainer = out.get("trainer")
    if "activation_checkpointing" in cfg.get("trainer", {}) and isinstance(trainer, dict) \
            and "activation_checkpointing" not in trainer:
        out["trainer"] = {**trainer, "activation_checkpointing": False}
    return out


def _every(step: int, every: int | None, steps_per_epoch: int | None) -> bool:
    """Whether a periodic action is due after ``step``: every ``every`` steps (0: never), or at every
    epoch end when ``every`` is null."""
    if every is None:
        return bool(steps_per_epoch) and step % steps_per_epoch == 0
    return every > 0 and step % every == 0


def _init_wandb(cfg: DictConfig, run_id: str | None):
    """A W&B run (offline unless logger.mode=online), resumed when the checkpoint knows its id."""
    import wandb

    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                      tags=list(cfg.logger.tags), name=cfg.run_name, mode=cfg.logger.mode, dir=str(cfg.output_dir),
                      config=OmegaConf.to_container(cfg, resolve=True), id=run_id, resume="allow")


def _format(record: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step")


def run_training(cfg: DictConfig, task: Task) -> dict | None:
    """Run ``task`` as configured by ``cfg``; returns the result metrics (None if the run had already
    finished). Bad input exits with status 2 before anything is written."""
    # ---------------------------------------------------------------- checks (nothing written yet)
    try:
        check_config(cfg, task)
    except ValueError as err:
        fail(err)
    try:
        return _run(cfg, task)
    finally:  # on every way out, also a failure or a signal: the process group ends before the interpreter
        end_process_group()


def _run(cfg: DictConfig, task: Task) -> dict | None:
    from accelerate import Accelerator

    code_version = git_commit()  # recorded in result.json: the code this run started with
    fsdp2 = distributed_name(cfg) == "fsdp2"
    # FSDP2: Accelerate only starts the process group; mixed precision is FSDP2's own policy
    acc = Accelerator(mixed_precision="no" if fsdp2 else task.precisions[cfg.precision], cpu=cfg.cpu)
    is_main, world, t = acc.is_main_process, acc.num_processes, cfg.trainer
    output_dir = Path(cfg.output_dir)
    try:
        task.check(acc)
        out_state = check_output_dir(cfg.output_dir, cfg.resume)
        if out_state.finished:
            acc.print(f"{output_dir}/result.json exists: this run already finished; nothing to do")
            return None
        resume_from = latest_checkpoint(output_dir / "checkpoints", complete=True) if cfg.resume else None
        if resume_from is not None:
            saved, where = _saved_config(resume_from, output_dir)
            if saved is not None:
                check_resume_config(_with_later_defaults(saved, cfg), cfg, MAY_CHANGE_ON_RESUME, where)
    except (ValueError, FileNotFoundError) as err:
        fail(err)

    # ---------------------------------------------------------------- model, optimizer, schedule
    seed_everything(cfg.seed)
    try:
        model, optimizer, scheduler, total_steps = task.build(acc)
    except (ValueError, FileNotFoundError) as err:
        fail(err)
    if t.get("activation_checkpointing", False) and not fsdp2:
        try:
            enable_activation_checkpointing(model)  # FSDP2: applied by the task before sharding
        except ValueError as err:
            fail(err)
    if cfg.get("compile", False):
        model = torch.compile(model)
    if not fsdp2:
        model = acc.prepare(model)  # DDP over N processes; autocast for precision=bf16
    n_params = count_parameters(acc.unwrap_model(model))
    acc.print(f"{task.describe(n_params)} {world} process(es) x micro-batch {task.micro} x {task.accum} accumulation "
              f"= {t.total_batch_size} per step | {total_steps} steps | optimizer {cfg.optimizer.name} lr "
              f"{cfg.optimizer.get('lr')} | device {acc.device}, precision {cfg.precision}")

    # ---------------------------------------------------------------- resume
    ckpt = CheckpointManager(output_dir / "checkpoints", t.keep_last_checkpoints, acc.process_index, world,
                             barrier=acc.wait_for_everyone, sharded=fsdp2)
    step, local, meta = 0, None, {}
    if resume_from is not None:
        try:
            shared, local, meta = ckpt.load(resume_from)
        except (CheckpointError, FileNotFoundError) as err:
            fail(err)
        if fsdp2:
            try:  # each rank reads its rows of the saved shards (also at another number of processes)
                load_sharded(model, optimizer, Path(meta["path"]) / SHARDED_DIR, shared["sharded_state"])
            except (ValueError, RuntimeError, OSError) as err:
                fail(f"cannot load {meta['path']}: {str(err).strip().splitlines()[0] if str(err).strip() else err}")
        else:
            acc.unwrap_model(model).load_state_dict(shared["model"])
            optimizer.load_state_dict(shared["optimizer"])
            place_projectors(optimizer)  # GaLore/APOLLO/Fira projectors follow their parameter's device
        scheduler.load_state_dict(shared["scheduler"])
        if "previous_ranks" in local:  # a sharded checkpoint of another number of processes
            previous = local["previous_ranks"]
            try:
                local = task.convert_local(previous, acc.process_index, world)
            except ValueError as err:
                fail(err)
            # RNG: rank r continues with the generators of the old rank r (the last old rank's when r is new)
            local["rng"] = previous[min(acc.process_index, len(previous) - 1)]["rng"]
            acc.print(f"checkpoint of {len(previous)} process(es) resumed on {world}: model and optimizer "
                      "resharded, data position converted")
        set_rng_state(local["rng"])
        step = meta["step"]
        acc.print(f"resumed from {meta.get('path', resume_from)} at step {step}")
    elif cfg.resume:
        acc.print(f"resume=true but {output_dir} has no checkpoint: starting from step 0")
    task.start(local, meta)

    # ---------------------------------------------------------------- output folder, loggers
    config = OmegaConf.to_container(cfg, resolve=True)
    lock, locked_out = None, None  # the main process holds the folder's lock until the run ends
    if is_main:
        try:
            lock = lock_run_dir(output_dir)
        except ValueError as err:
            locked_out = err
        else:
            ckpt.remove_stale_tmp()  # leftovers of an interrupted save: ours now that we hold the lock
    if acc.reduce(torch.tensor(float(locked_out is not None), device=acc.device), reduction="sum").item() > 0:
        fail(locked_out or "output_dir is in use by another run")  # every process stops, the main one says why
    try:
        return _train(cfg, task, acc, model, optimizer, scheduler, total_steps, n_params, ckpt, step, meta, config,
                      code_version)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, task, acc, model, optimizer, scheduler, total_steps, n_params, ckpt, step, meta, config,
           code_version) -> dict:
    """The run once checked, built and resumed: output folder, loggers, the loop, the result."""
    is_main, world, t, output_dir = acc.is_main_process, acc.num_processes, cfg.trainer, Path(cfg.output_dir)
    fsdp2 = distributed_name(cfg) == "fsdp2"
    tokens_seen, last_loss = meta.get("tokens_seen", 0), meta.get("last_loss", float("nan"))
    last_eval = meta.get("last_eval")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        truncate_metrics(output_dir / "metrics.jsonl", step)  # drop lines logged after the checkpoint
    logger = MetricsLogger(output_dir / "metrics.jsonl", enabled=is_main)
    wandb_run = _init_wandb(cfg, meta.get("wandb_id")) if is_main and cfg.logger.name == "wandb" else None
    if wandb_run is not None:
        logger.add_sink(lambda record: wandb_run.log(record, step=record["step"]))

    def stop_with(message: str, bar=None) -> NoReturn:
        if bar is not None:
            bar.close()
        newest = latest_checkpoint(output_dir / "checkpoints", complete=True)
        where = f"the newest checkpoint is {newest} (continue from it with resume=true)" if newest else \
            "no checkpoint was written"
        acc.print(f"error: {message}; stopping. {where}", file=sys.stderr)
        logger.close()
        raise SystemExit(1)

    def save(step_now: int, bar) -> Path:
        bad = not finite_weights_and_state(acc.unwrap_model(model), optimizer)
        if acc.reduce(torch.tensor(float(bad), device=acc.device), reduction="sum").item() > 0:
            stop_with(f"non-finite weights or optimizer state after step {step_now}; no checkpoint written", bar)
        sharded = None
        if fsdp2:  # model/optimizer tensors: each rank writes its shards (torch.distributed.checkpoint)
            sharded, skeleton = sharded_state(model, optimizer)
            shared = {"sharded_state": skeleton, "scheduler": scheduler.state_dict()}
        else:
            shared = {"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict()}
        run_meta = {"config": config, "tokens_seen": tokens_seen, "last_loss": last_loss, "last_eval": last_eval,
                    "wandb_id": wandb_run.id if wandb_run is not None else None, **task.meta_state()}
        try:
            return ckpt.save(step_now, shared, {"rng": rng_state(), **task.local_state()}, run_meta, sharded=sharded)
        except CheckpointWriteError as err:
            stop_with(str(err), bar)

    def evaluate(step_now: int) -> dict:
        try:
            record = {"step": step_now, **task.evaluate(model, step_now)}
        except DataError as err:
            stop_with(str(err))
        logger.log(record)
        acc.print(f"\nstep {step_now}: {_format(record)}")
        return record

    # ---------------------------------------------------------------- training loop
    reset_peak_memory(acc.device)
    bar = progress_bar(total_steps, initial=step, enabled=is_main, desc=task.name)
    train_time, session_tokens, session_steps = 0.0, 0, 0
    spe = task.steps_per_epoch
    with StopSignal() as stop:
        while step < total_steps:
            t0 = time.perf_counter()
            # (1) the step's micro-batches; the loss is normalised by the step's global count
            try:
                micro = task.batches(step)
            except DataError as err:  # a damaged record found while streaming
                stop_with(str(err), bar)
            counts = torch.tensor([task.counts(b) for b in micro], dtype=torch.float64).sum(0)  # [count, tokens]
            global_count, step_tokens = acc.reduce(counts.to(acc.device), reduction="sum").tolist()
            # (2) forward / backward over the micro-batches. DDP: gradients synchronised on the last one;
            # FSDP2: each micro-batch's gradients are reduce-scattered into the sharded gradients (no
            # unsharded gradient kept between micro-batches). Both average over ranks: hence x world.
            loss_total = torch.zeros((), dtype=torch.float64, device=acc.device)
            for i, batch in enumerate(micro):
                with acc.no_sync(model) if i < len(micro) - 1 and not fsdp2 else nullcontext():
                    loss_sum = task.loss_sum(model, batch)
                    acc.backward(loss_sum * (world / max(global_count, 1.0)))
                    loss_total += loss_sum.detach().double()
            loss = acc.reduce(loss_total, reduction="sum").item() / max(global_count, 1.0)
            if not math.isfinite(loss):  # stop before the bad update; the newest checkpoint stays the good one
                stop_with(f"non-finite training loss {loss} at step {step + 1}", bar)
            # (3) update
            lr = scheduler.get_last_lr()[0]
            if t.grad_clip > 0:
                if fsdp2:  # DTensor gradients: the norm of the local rows summed over ranks
                    clip_grad_norm(list(model.parameters()), t.grad_clip)
                else:
                    acc.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += int(step_tokens)
            session_tokens += int(step_tokens)
            session_steps += 1
            dt = time.perf_counter() - t0
            train_time += dt
            last_loss = loss
            # (4) log, evaluate, checkpoint, stop on signal
            if step % t.log_every == 0 or step == total_steps:
                logger.log({"step": step, **task.position(step), "loss": loss, "lr": lr, "tokens_seen": tokens_seen,
                            "tokens_per_s": step_tokens / dt, "examples_per_s": t.total_batch_size / dt})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / dt:.0f}")
            if _every(step, t.eval_every, spe) or step == total_steps:
                last_eval = evaluate(step)
            stop_now = acc.reduce(torch.tensor(float(stop.requested), device=acc.device), reduction="sum").item() > 0
            periodic = _every(step, t.checkpoint_every, spe) and (step < total_steps or task.checkpoint_final)
            if periodic or (stop_now and step < total_steps):
                path = save(step, bar)
                if stop_now and step < total_steps:
                    bar.close()
                    acc.print(f"stopped by signal at step {step}; checkpoint {path}; continue with resume=true")
                    logger.close()
                    raise SystemExit(stop.exit_code() or 143)
    bar.close()
    if last_eval is None or last_eval["step"] != step:  # e.g. stopped after the final checkpoint, before the result
        last_eval = evaluate(step)

    # ---------------------------------------------------------------- result
    common = {"steps": step, "tokens_seen": tokens_seen, "final_train_loss": last_loss,
              "train_tokens_per_s": session_tokens / max(train_time, 1e-9),
              "train_examples_per_s": session_steps * t.total_batch_size / max(train_time, 1e-9),
              "train_time_s": train_time, "optimizer_state_bytes": optimizer_state_bytes(optimizer),
              "optimizer_state_bytes_per_rank": int(max(gather_list(local_state_bytes(optimizer), acc.device))),
              **peak_memory_bytes(acc.device), "num_parameters": n_params["total"], "world_size": world,
              "distributed": distributed_name(cfg)}
    common["peak_memory_bytes_per_rank"] = [int(v) for v in gather_list(common["peak_memory_bytes"], acc.device)]
    metrics, summary = task.result(last_eval, common)
    if is_main:
        command = " ".join(["python", os.path.basename(sys.argv[0])] + sys.argv[1:])
        path = write_result(output_dir, config, metrics, commit=code_version, command=command)
        print(f"{summary}\nresult: {path}")
    logger.close()
    if wandb_run is not None:
        wandb_run.summary.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        wandb_run.finish()
    # every process arrives here before any tears its connections down (see run_training's finally)
    acc.wait_for_everyone()
    return metrics
