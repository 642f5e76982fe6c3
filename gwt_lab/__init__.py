"""The experiment harness of the GWT codebase: training loop, data, models, metrics, checkpoints,
results/tables and the Slurm callback. It builds on the optimizer library ``gwt``; ``gwt`` never
imports it."""
