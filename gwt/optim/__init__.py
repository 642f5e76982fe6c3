"""GWT optimizers and the name -> optimizer registry."""
from gwt.optim.adafactor import GWTAdafactor
from gwt.optim.adamw import GWTAdamW
from gwt.optim.registry import OPTIMIZER_NAMES, build_optimizer, optimizer_options
from gwt.optim.wrapper import GWT

__all__ = ["GWT", "GWTAdafactor", "GWTAdamW", "OPTIMIZER_NAMES", "build_optimizer", "optimizer_options"]
