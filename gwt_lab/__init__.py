"""The experiment harness of the GWT codebase: training loop, data, models, metrics, checkpoints,
results/tables and the Slurm callback. It builds on the optimizer library ``gwt``; ``gwt`` never
imports it."""

def _register_resolvers() -> None:
    """OmegaConf resolvers the configs use (``${run_suffix:}``), registered for anyone composing them."""
    try:
        from gwt_lab.train.output_dir import register_resolvers
    except ImportError:  # the harness extras (omegaconf) are not installed
        return
    register_resolvers()


_register_resolvers()
