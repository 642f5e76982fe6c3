"""Graceful stop on SIGTERM / SIGUSR1 (cluster pre-emption, ``scancel --signal``).

The handler only records the signal; the training loop checks ``stop.requested`` after each
optimizer step, saves a checkpoint and exits. With several processes, combine the flag across
ranks (e.g. an all-reduce of ``float(stop.requested)``) so that all ranks stop at the same step.
"""
from __future__ import annotations

import signal
import threading

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopSignal:
    """Context manager that records the first of ``signals`` received.

    Attributes:
        requested: True once a signal arrived.
        signum: its number (None before).
    Handlers are only installed from the main thread; previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[str, ...] = DEFAULT_SIGNALS):
        self.signals = tuple(getattr(signal, name) for name in signals if hasattr(signal, name))
        self.requested = False
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            print(f"[signal] received {signal.Signals(signum).name}: will checkpoint after the current step and exit",
                  flush=True)
        self.requested = True
        self.signum = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def exit_code(self) -> int:
        """Conventional status for a run stopped by a signal: 128 + signal number."""
        return 128 + int(self.signum) if self.signum is not None else 0

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
