"""Data parallelism for the training loop: DDP (Accelerate) or FSDP2 (``torch.distributed.fsdp.fully_shard``).

``distributed=ddp`` (default): every process holds the whole model and optimizer state; Accelerate
wraps the model in ``DistributedDataParallel`` and gradients are averaged over processes.

``distributed=fsdp2``: every parameter is a DTensor split by rows over the processes (``Shard(0)``);
each decoder layer is one FSDP unit and the root module holds the rest (embeddings, final norm, output
layer), as torchtitan applies it. A unit's weights are gathered for its forward and backward and
freed afterwards (``reshard_after_forward``); gradients are reduce-scattered (averaged over processes,
like DDP's all-reduce) so each rank keeps only its rows' gradients and optimizer state. The same code
runs on GPUs (nccl) and on CPU processes (gloo), which is what the CPU tests exercise; Accelerate only
starts the process group here.

``precision=bf16`` under FSDP2: ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``
(fp32 master weights and optimizer states, bf16 compute, fp32 gradient reduction).

Checkpoints under FSDP2 (``save_sharded`` / ``load_sharded``): ``torch.distributed.checkpoint`` writes
each rank's shards of the model and optimizer tensors into ``<checkpoint>/sharded/``; everything that
is not a tensor (param-group settings, ...) goes to a plain ``.pt`` file of the checkpoint. A sharded
checkpoint loads on another number of processes: DCP reads each rank's new rows from the saved ones.
Loading never unpickles code: the ``.metadata`` file is read with an allow-list unpickler
(:class:`SafeFileSystemReader`), tensors are read with ``torch.load(weights_only=True)`` (DCP's own
reader) and an entry stored as pickled bytes is refused.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

DISTRIBUTED_NAMES = ("ddp", "fsdp2")
SHARDED_DIR = "sharded"  # DCP folder inside a checkpoint
# Optimizers that need whole matrices (SVD / random projections of the full gradient) and so cannot
# step on row-sharded parameters.
WHOLE_MATRIX_OPTIMIZERS = ("galore", "apollo", "apollo_mini", "fira")


def distributed_name(cfg) -> str:
    """``cfg.distributed.name`` (``ddp`` when the config has no ``distributed`` group)."""
    section = cfg.get("distributed")
    return "ddp" if section is None else str(section.get("name", "ddp"))


def check_distributed(cfg, supports_fsdp2: bool, task_name: str) -> None:
    """Refuse combinations FSDP2 cannot run (``ValueError`` with one line), before anything is built."""
    name = distributed_name(cfg)
    if name not in DISTRIBUTED_NAMES:
        raise ValueError(f"distributed.name={name!r} is not valid; choose one of {', '.join(DISTRIBUTED_NAMES)}")
    if name != "fsdp2":
        return
    if not supports_fsdp2:
        raise ValueError(f"distributed=fsdp2 is not available for {task_name}; use distributed=ddp")
    opt = str(cfg.optimizer.get("name"))
    if opt in WHOLE_MATRIX_OPTIMIZERS:
        raise ValueError(f"optimizer={opt} needs whole weight matrices (its projection uses the full gradient) and "
                         "cannot run with distributed=fsdp2, which splits every matrix by rows over the processes; "
                         "use distributed=ddp, or an optimizer that steps on row shards: adamw, gwt (any wavelet), "
                         "gwt_adafactor")
    flag = cfg.distributed.get("reshard_after_forward", True)
    if not isinstance(flag, bool):
        raise ValueError(f"distributed.reshard_after_forward={flag!r} is not valid; choose true or false")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face decoder (``model.model.layers``), else ``[]``."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass instead of keeping them.

    Decoders: each block of ``model.model.layers`` is wrapped with torch's non-reentrant
    ``checkpoint_wrapper`` (before ``fully_shard``, so FSDP2 gathers a block's weights around the
    recomputation too; the wrapper keeps the state-dict keys unchanged). Other Hugging Face models:
    their own ``gradient_checkpointing_enable``. Idempotent."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is not None and len(layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, CheckpointWrapper):
                layers[i] = checkpoint_wrapper(layer)
    elif getattr(model, "supports_gradient_checkpointing", False):
        if not getattr(model, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(f"trainer.activation_checkpointing=true: {type(model).__name__} has no transformer blocks to "
                         "recompute; set trainer.activation_checkpointing=false")
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False


def prepare_model(model: torch.nn.Module, cfg, device: torch.device, world_size: int) -> torch.nn.Module:
    """Activation checkpointing (``trainer.activation_checkpointing``), then for ``distributed=fsdp2``
    :func:`apply_fsdp2`. Call before building the optimizer (FSDP2 replaces the parameters)."""
    if cfg.trainer.get("activation_checkpointing", False):
        enable_activation_checkpointing(model)
    if distributed_name(cfg) == "fsdp2":
        model = apply_fsdp2(model, device, world_size, str(cfg.precision),
                            bool(cfg.distributed.get("reshard_after_forward", True)))
    return model


def apply_fsdp2(model: torch.nn.Module, device: torch.device, world_size: int, precision: str,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root, on a 1-D mesh over all processes.

    ``precision``: ``bf16`` -> bf16 compute with fp32 parameters and fp32 gradient reduction;
    ``fp32`` / ``pure_bf16`` -> the parameters' own dtype throughout."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():  # one process started without a launcher: a process group of one
        if world_size != 1:
            raise ValueError(f"distributed=fsdp2 with {world_size} processes needs a launcher (torchrun)")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)  # ended by end_process_group with the run
    mesh = init_device_mesh(device.type, (world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"distributed=fsdp2: {type(model).__name__} has no decoder layers (model.model.layers) "
                         "to shard; use distributed=ddp")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    # the root's parameters (embeddings, output layer) are used last in the forward: keep them gathered
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp)
    return model


def end_process_group() -> None:
    """Destroy the default process group, whoever started it (the launcher's through Accelerate, or
    the one-process group of :func:`apply_fsdp2`), while the interpreter is still whole. Left to the
    interpreter's exit, gloo's threads can outlive the objects they use and abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm of (possibly DTensor) gradients to ``max_norm``; returns the norm.

    With DTensor gradients the norm of the local rows is summed over ranks (``full_tensor``), so every
    rank scales by the same global factor, as for DDP's whole gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in parameters if p.grad is not None], max_norm, total)
    return total


def local_state_bytes(optimizer) -> int:
    """Bytes of optimizer state this rank holds (its local shards of DTensor states)."""
    from gwt.memory import optimizer_state_bytes

    return optimizer_state_bytes(optimizer, local=True)


# ------------------------------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint)
# ------------------------------------------------------------------------------------------------
_TENSOR_KEY = "__sharded_tensor__"


def split_tensors(tree, prefix: str = "") -> tuple[dict, object]:
    """``(tensors, skeleton)``: every tensor of nested dicts/lists under a flat dotted key, and ``tree``
    with each tensor replaced by ``{"__sharded_tensor__": key}`` (plain data for ``torch.save``)."""
    tensors: dict = {}

    def walk(value, key):
        if isinstance(value, torch.Tensor):
            tensors[key] = value
            return {_TENSOR_KEY: key}
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(value))
        return value

    return tensors, walk(tree, prefix)


def fill_tensors(skeleton, tensors: dict):
    """Inverse of :func:`split_tensors`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_KEY}:
            return tensors[skeleton[_TENSOR_KEY]]
        return {k: fill_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(fill_tensors(v, tensors) for v in skeleton)
    return skeleton


def sharded_state(model, optimizer) -> tuple[dict, object]:
    """``(tensors, skeleton)`` of the model's and optimizer's state dicts (FQN keys, DTensor values)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return split_tensors({"model": model_sd, "optimizer": optim_sd})


def save_sharded(tensors: dict, folder: Path) -> None:
    """Every rank writes its shards of ``tensors`` into ``folder`` (``dcp.save``; collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True))


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` from a fixed allow-list of plain record classes only (the index of
    tensor shapes, dtypes and file offsets); any other global is refused, so the file cannot run code."""

    ALLOWED = {("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata",
        "TensorProperties", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module == "torch" and name in _TORCH_DTYPES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's .metadata")


_TORCH_DTYPES = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


def _reader_class():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeFileSystemReader(dcp.FileSystemReader):
        """``FileSystemReader`` whose ``.metadata`` is read with an allow-list unpickler."""

        def read_metadata(self, *args, **kwargs) -> Metadata:
            path = Path(self.path) / ".metadata"
            data = path.read_bytes()
            try:
                metadata = _MetadataUnpickler(io.BytesIO(data)).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as err:
                raise ValueError(f"{path} is damaged or not a checkpoint index ({type(err).__name__}: {err})") from None
            if not isinstance(metadata, Metadata):
                raise ValueError(f"{path} is not a checkpoint index (holds a {type(metadata).__name__})")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader


def _planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorsOnlyLoadPlanner(DefaultLoadPlanner):
        """Loads tensors only: an entry stored as pickled bytes is refused, never unpickled."""

        def load_bytes(self, read_item, value) -> None:
            raise ValueError(f"checkpoint entry {read_item.dest_index.fqn!r} is pickled data, not a tensor; "
                             "refused (sharded checkpoints of this program hold tensors only)")

    return TensorsOnlyLoadPlanner()


def load_sharded(model, optimizer, folder: Path, skeleton) -> None:
    """Load the model and optimizer written by :func:`save_sharded` into ``model`` / ``optimizer``
    (collective). Works at another world size: each rank reads its current rows."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    tensors, _ = sharded_state(model, optimizer)  # the current layout: DCP fills these in place
    saved_keys = _tensor_keys(skeleton)
    if saved_keys != set(tensors):
        missing = sorted(saved_keys ^ set(tensors))[:3]
        raise ValueError(f"{folder} holds other model/optimizer entries than this run builds (e.g. {missing}); "
                         "resume with the same model and optimizer config")
    try:
        dcp.load(tensors, storage_reader=_reader_class()(str(folder)), planner=_planner())
    except dcp.api.CheckpointException as err:  # a BaseException: one failure per rank
        failures = list(err.failures.values())
        first = failures[0] if failures else err
        inner = getattr(first, "exc", first)
        raise ValueError(f"{folder}: {type(inner).__name__}: {str(inner).strip().splitlines()[0] if str(inner).strip() else ''}") \
            from None
    state = fill_tensors(skeleton, tensors)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _tensor_keys(skeleton) -> set:
    keys: set = set()

    def walk(value):
        if isinstance(value, dict):
            if set(value) == {_TENSOR_KEY}:
                keys.add(value[_TENSOR_KEY])
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(skeleton)
    return keys


def gather_max(value: float, device) -> float:
    """Largest ``value`` over all processes (the value itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def gather_list(value: float, device) -> list[float]:
    """``value`` of every process, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([float(value)], dtype=torch.float64, device=device))
    return [t.item() for t in out]


__all__ = ["DISTRIBUTED_NAMES", "SHARDED_DIR", "WHOLE_MATRIX_OPTIMIZERS", "apply_fsdp2", "check_distributed",
           "clip_grad_norm", "decoder_layers", "distributed_name", "enable_activation_checkpointing", "fill_tensors", "prepare_model",
           "gather_list", "gather_max", "load_sharded", "local_state_bytes", "end_process_group", "save_sharded", "sharded_state",
           "split_tensors"]
