"""Resumable training checkpoints: MONAI's checkpoint saver and loader extended with the trainer's own state and the
AMP grad scaler, and the SIGINT/SIGTERM stop that saves a resumable checkpoint first."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader as _CheckpointLoader
from monai.handlers import CheckpointSaver as _CheckpointSaver

from monai_scrd.checkpoint import CheckpointError, load_state_dict_checked, load_weights_file
from monai_scrd.data.errors import one_line
from monai_scrd.engines.utils import TrainingInterrupted, unwrap

__all__ = ["TrainerCheckpointSaver", "TrainerCheckpointLoader"]

logger = logging.getLogger("monai_scrd.engines")


def _engine_objects(engine: Engine) -> dict:
    objs = {"trainer": engine}
    scaler = getattr(engine, "scaler", None)
    if scaler is not None and hasattr(scaler, "state_dict"):
        objs["scaler"] = scaler
    return objs


class TrainerCheckpointSaver(_CheckpointSaver):
    """``CheckpointSaver`` that also saves the engine it is attached to (``"trainer"``: iteration, epoch) and the AMP
    grad scaler, so a run can resume where it stopped (the trainer cannot be referenced from its own handler list in
    a bundle config). Everything else as MONAI's (``save_interval`` iterations with ``epoch_level=False``).

    SIGINT (Ctrl-C) and SIGTERM while the engine runs stop it at the end of the current iteration, after a resumable
    checkpoint of that iteration is saved, with one line (:class:`~monai_scrd.engines.TrainingInterrupted`) saying
    where it is and how to continue (``--resume true``); a second signal stops at once, saving nothing. The signal
    handlers are installed when the run starts (in the main thread of a process that is not part of a distributed
    group: there the ranks could stop at different iterations) and restored when it ends."""

    def attach(self, engine: Engine) -> None:
        self.save_dict.update(_engine_objects(engine))
        super().attach(engine)
        self._signal: int | None = None
        self._previous: dict = {}
        engine.add_event_handler(Events.STARTED, self._catch_signals)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_if_signalled)
        engine.add_event_handler(Events.COMPLETED, self._release_signals)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._signal is not None:  # a second one: stop now
            self._release_signals()
            raise KeyboardInterrupt
        self._signal = signum  # nothing else here: logging from a signal handler can deadlock

    def _catch_signals(self, engine: Engine) -> None:  # noqa: ARG002
        if threading.current_thread() is not threading.main_thread() or (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            return
        self._signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _release_signals(self, engine: Engine | None = None) -> None:  # noqa: ARG002
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def save_now(self, engine: Engine) -> str:
        """Save a resumable checkpoint of the engine's current iteration (the interval checkpoint, else the final one)
        and return its path."""
        checkpoint = self._interval_checkpoint
        if checkpoint is None and self._final_checkpoint is not None:
            self._delete_previous_final_ckpt()
            checkpoint = self._final_checkpoint
        if checkpoint is None:
            checkpoint = Checkpoint(self.save_dict, DiskSaver(self.save_dir, require_empty=False, atomic=True),
                                    filename_prefix="scrd_interrupted", global_step_transform=lambda e, _: e.state.iteration)
        checkpoint(engine)
        if checkpoint is self._final_checkpoint and self._final_filename:
            return os.path.join(self.save_dir, self._final_filename)
        return os.fspath(checkpoint.last_checkpoint)

    def _stop_if_signalled(self, engine: Engine) -> None:
        if self._signal is None:
            return
        name = signal.Signals(self._signal).name
        self._release_signals()
        path = self.save_now(engine)
        total = engine.state.max_iters or "?"
        raise TrainingInterrupted(f"training stopped by {name} at iteration {engine.state.iteration} of {total}; "
                                  f"resumable checkpoint: {path} (continue with --resume true, and the same settings)")


class TrainerCheckpointLoader(_CheckpointLoader):
    """``CheckpointLoader`` that restores the engine it is attached to (``"trainer"``) and its AMP grad scaler along
    with the objects in ``load_dict`` (model, optimizer) when the run starts."""

    def attach(self, engine: Engine) -> None:
        self.load_dict.update(_engine_objects(engine))
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        data = load_weights_file(self.load_path)  # one line naming the file when it is missing or unreadable
        missing = [k for k in self.load_dict if k not in data and k != "scaler"]
        if missing:
            raise CheckpointError(f"{self.load_path}: not a resumable training checkpoint (missing {missing}); "
                                  "use a file from ckpt_dir, not models/model.pt")
        if "scaler" in self.load_dict and "scaler" not in data:
            self.load_dict.pop("scaler")
        limit = engine.state.max_iters  # the configured limit wins over the checkpoint's, as MONAI does for max_epochs
        try:
            super().__call__(engine)
        except RuntimeError as e:  # e.g. weights of another backbone: size mismatches
            for key, obj in self.load_dict.items():  # a model that does not fit: say which weights differ
                if isinstance(obj, torch.nn.Module) and isinstance(data.get(key), Mapping):
                    load_state_dict_checked(unwrap(obj), data[key], self.load_path)
            raise CheckpointError(f"{self.load_path}: does not fit this model/optimizer ({one_line(e)})") from e
        if limit is not None:
            engine.state.max_epochs, engine.state.max_iters = None, limit
            if engine.state.iteration >= limit:
                logger.info(f"the checkpoint is already at iteration {engine.state.iteration} >= {limit}; nothing to train")
        logger.info(f"resumed training at iteration {engine.state.iteration} from {self.load_path}")
