"""GWT: Gradient Wavelet Transform optimizers.

Adam-style moments are kept only on the wavelet approximation of each gradient matrix
(1/2**level of its size); the detail coefficients pass through, scaled.
"""
from gwt.groups import gwt_param_groups
from gwt.memory import estimate_state_bytes, optimizer_state_bytes
from gwt.optim import GWT, GWTAdafactor, GWTAdamW, OPTIMIZER_NAMES, build_optimizer

__all__ = [
    "GWT",
    "GWTAdafactor",
    "GWTAdamW",
    "OPTIMIZER_NAMES",
    "build_optimizer",
    "estimate_state_bytes",
    "gwt_param_groups",
    "optimizer_state_bytes",
]
__version__ = "0.1.0"
