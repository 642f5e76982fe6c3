"""Adapters to training frameworks. Each submodule imports its framework lazily, inside functions,
so ``import gwt`` never needs it (``gwt.integrations.hf``: Hugging Face ``transformers.Trainer``)."""
