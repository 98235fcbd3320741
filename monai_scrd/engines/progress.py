"""Ignite handlers for the training log: the iteration limit, the progress line of each log interval and the line of
each validation run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from ignite.engine import Engine

from monai_scrd.engines.training import train_log_values

__all__ = ["IterationLimit", "ProgressLog", "ValidationLog"]

logger = logging.getLogger("monai_scrd.engines")


class IterationLimit:
    """Trains for ``max_iterations`` iterations in total, counting those before a resume, with Ignite's own limit
    (``engine.state.max_iters``, which MONAI's workflows cannot pass to ``Engine.run``): set on the engine's state when
    attached, instead of ``max_epochs`` (give the trainer ``max_epochs=None``). The epochs are plain passes over the
    data loader."""

    def __init__(self, max_iterations: int) -> None:
        if int(max_iterations) < 1:
            raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
        self.max_iterations = int(max_iterations)

    def attach(self, engine: Engine) -> None:
        engine.state.max_epochs = None
        engine.state.max_iters = self.max_iterations


class ProgressLog:
    """The one training log line per log interval, as ``StatsHandler(iteration_print_logger=ProgressLog(...))``:
    iteration of total, the values of ``output_transform`` (loss and per-scale alpha) and the speed and time left.

    Args:
        max_iterations: the total (default: the engine's ``state.max_iters``).
        output_transform: engine output -> ``{name: float}`` (default: ``train_log_values``).
    """

    def __init__(self, max_iterations: int | None = None, output_transform: Callable | None = None) -> None:
        self.max_iterations = max_iterations
        self.output_transform = output_transform
        self._last: tuple[float, int] | None = None

    def __call__(self, engine: Engine) -> None:
        it = engine.state.iteration
        total = self.max_iterations or engine.state.max_iters
        values = (self.output_transform or train_log_values)(engine.state.output)
        line = f"iteration {it}/{total}: " + " ".join(f"{k} {v:.5g}" for k, v in values.items())
        now = time.perf_counter()
        if self._last is not None and it > self._last[1]:
            rate = (now - self._last[0]) / (it - self._last[1])
            line += f" ({rate:.2f} s/it" + (f", ~{rate * (total - it):.0f} s left)" if total else ")")
        self._last = (now, it)
        logger.info(line)


class ValidationLog:
    """The one log line of a validation run during training, as ``StatsHandler(epoch_print_logger=ValidationLog())``
    on the validation evaluator: ``validation normals: mean_score ... p99_score ... std_score ...`` instead of
    Ignite's ``Epoch[17] Metrics -- ...``, whose epoch (of an iteration-based run) does not match the
    ``iteration i/n`` progress lines around it. The metrics are the evaluator's (``ScoreCollector(mode="validation")``).
    """

    def __call__(self, engine: Engine) -> None:
        metrics = {k[4:] if k.startswith("val_") else k: v for k, v in engine.state.metrics.items()}
        values = " ".join(f"{k} {v:.5g}" for k, v in metrics.items() if isinstance(v, (int, float, np.number)))
        logger.info(f"validation normals: {values} (monitoring only)")
