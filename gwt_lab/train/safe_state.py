"""Checkpoint states as plain data, so every checkpoint loads with ``torch.load(weights_only=True)``.

Most states (model weights, AdamW/GWT moments, schedulers, RNG snapshots, data positions) are
already nested dicts/lists/tuples of tensors, numbers and strings. The low-rank baselines keep a
projector *object* per parameter in their optimizer state (GaLore, APOLLO, Fira). ``to_plain``
replaces each such object by ``{"__object__": "<module>.<class>", "attrs": {...}}`` holding only
tensors, numbers, strings and None; ``from_plain`` rebuilds the object from a fixed allow-list of
classes (``PLAIN_CLASSES``), checking every attribute. Nothing else is ever reconstructed: a file
cannot name a class or function to run.
"""
from __future__ import annotations

import importlib
from collections import OrderedDict

import torch

OBJECT_KEY = "__object__"

# Classes a checkpoint may hold, stored as their plain attributes (module, class name).
PLAIN_CLASSES = {
    "galore_torch.galore_projector.GaLoreProjector",   # optimizer=galore
    "apollo_torch.random_projector.GradientProjector",  # optimizer=apollo proj=random
    "apollo_torch.svd_projector.GaLoreProjector",       # optimizer=apollo proj=svd
    "fira.gradient_projection.GradientProjector",       # optimizer=fira
}

_ATOMS = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_ATTR_VALUES = (torch.Tensor, bool, int, float, str, type(None))


def _map_container(value, fn, where: str):
    """``value`` (a dict, OrderedDict, list or tuple) with ``fn`` applied to its items; the same object
    when nothing changed (so e.g. a model state dict keeps its ``_metadata``)."""
    if type(value) in (dict, OrderedDict):
        new = {k: fn(v, f"{where}.{k}") for k, v in value.items()}
        if all(new[k] is v for k, v in value.items()):
            return value
        out = type(value)(new)
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata
        return out
    new = [fn(v, f"{where}.{i}") for i, v in enumerate(value)]
    if all(a is b for a, b in zip(new, value)):
        return value
    return type(value)(new)


def _qualname(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def to_plain(value, where: str = "state"):
    """``value`` with every allow-listed object replaced by a dict of its attributes.

    Raises ``TypeError`` naming the position (e.g. ``optimizer.state.3.foo``) of any other object,
    since it would not load with ``weights_only=True``.
    """
    if isinstance(value, torch.Tensor) or isinstance(value, _ATOMS):
        return value
    if type(value) in (dict, OrderedDict, list, tuple):
        return _map_container(value, to_plain, where)
    name = _qualname(value)
    if name in PLAIN_CLASSES:
        attrs = {}
        for key, attr in vars(value).items():
            if not isinstance(attr, _ATTR_VALUES):
                raise TypeError(f"{where}: attribute {key!r} of {name} is a {type(attr).__name__}; only tensors, "
                                "numbers, strings and None can be checkpointed")
            attrs[key] = attr
        return {OBJECT_KEY: name, "attrs": attrs}
    raise TypeError(f"{where}: a {name} cannot be stored in a checkpoint that loads with weights_only=True; "
                    f"known object types: {sorted(PLAIN_CLASSES)}")


def _rebuild(name: str, attrs, where: str):
    if name not in PLAIN_CLASSES:
        raise ValueError(f"{where}: object type {name!r} is not one a checkpoint may hold; "
                         f"allowed: {sorted(PLAIN_CLASSES)}")
    if not isinstance(attrs, dict) or not all(
            isinstance(k, str) and k.isidentifier() and not k.startswith("_") and isinstance(v, _ATTR_VALUES)
            for k, v in attrs.items()):
        raise ValueError(f"{where}: the attributes of {name} must be named tensors, numbers, strings or None")
    module_name, class_name = name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def from_plain(value, where: str = "state"):
    """Inverse of ``to_plain``: rebuild allow-listed objects; everything else is returned as is."""
    if isinstance(value, dict) and OBJECT_KEY in value:
        if set(value) != {OBJECT_KEY, "attrs"}:
            raise ValueError(f"{where}: a stored object must have exactly the keys {OBJECT_KEY!r} and 'attrs'")
        return _rebuild(value[OBJECT_KEY], value["attrs"], where)
    if type(value) in (dict, OrderedDict, list, tuple):
        return _map_container(value, from_plain, where)
    return value


def place_projectors(optimizer) -> int:
    """Move the tensors of every allow-listed projector object in ``optimizer.state`` to its parameter's
    device; returns how many were moved. Call it after ``optimizer.load_state_dict`` of a checkpoint
    (loaded on CPU): ``load_state_dict`` moves plain state tensors but not those inside objects."""
    moved = 0
    for param, state in optimizer.state.items():
        if not isinstance(state, dict):
            continue
        for value in state.values():
            if _qualname(value) not in PLAIN_CLASSES:
                continue
            for key, attr in vars(value).items():
                if isinstance(attr, torch.Tensor) and attr.device != param.device:
                    setattr(value, key, attr.to(param.device))
                    moved += 1
    return moved
