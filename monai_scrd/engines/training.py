"""SCRD training iteration for MONAI's ``SupervisedTrainer`` (``iteration_update``)."""

from __future__ import annotations

import torch
from monai.engines import IterationEvents
from monai.utils import CommonKeys

from monai_scrd.engines.utils import unwrap

__all__ = ["SCRDTrainStep", "alpha_metric_names", "ratio_metric_names", "train_log_values"]


def alpha_metric_names(num_scales: int = 3) -> list[str]:
    """Names of the per-scale alpha means in ``engine.state.metrics`` (scale 1 = finest, stride 4)."""
    return [f"alpha_{k + 1}" for k in range(num_scales)]


def ratio_metric_names(num_scales: int = 3) -> list[str]:
    """Names of the per-scale contrastive ratios ``pull / push`` (batch means) in ``engine.state.metrics``."""
    return [f"ratio_{k + 1}" for k in range(num_scales)]


class SCRDTrainStep:
    """One SCRD optimisation step, used as ``SupervisedTrainer(iteration_update=SCRDTrainStep())``.

    The batch holds the clean normal images under ``image_key`` and their noisy copies (``RandSimplexNoised``, made in
    the data loader workers) under ``noisy_key``. The step runs the network (through DDP when wrapped, so gradients
    are synchronised) to get teacher/student features and the scale weights, the noisy teacher pass when the model is
    contrastive, the trainer's ``loss_function`` (``build_loss``), and the optimiser step (with AMP's grad scaler when
    the trainer has ``amp=True`` on CUDA). Only the student side has trainable parameters (the teacher is frozen).

    The per-scale means of alpha are written to ``engine.state.metrics`` as ``alpha_1..alpha_K`` and, with the loss,
    to ``engine.state.output`` (``[{"loss": ..., "alpha": [K]}]``) so StatsHandler / MLflow can log them. For a
    contrastive loss with ``scale_terms`` the per-scale ratios ``pull / push`` are recorded the same way
    (``ratio_1..ratio_K``, ``"ratio"``): a ratio stuck near 1 means the push term does nothing.
    """

    def __init__(self, image_key: str = "image", noisy_key: str = "image_noisy") -> None:
        self.image_key = image_key
        self.noisy_key = noisy_key

    def __call__(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        x = torch.as_tensor(batchdata[self.image_key]).to(device, non_blocking=engine.non_blocking)
        core = unwrap(engine.network)
        x_noisy = None
        if core.contrastive:
            if self.noisy_key not in batchdata:
                raise KeyError(
                    f"batch has no {self.noisy_key!r}: add RandSimplexNoised to the training transforms of a contrastive model"
                )
            x_noisy = torch.as_tensor(batchdata[self.noisy_key]).to(device, non_blocking=engine.non_blocking)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        if x_noisy is not None and hasattr(x_noisy, "as_tensor"):
            x_noisy = x_noisy.as_tensor()

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp and engine.scaler is not None)
        with torch.autocast("cuda", enabled=use_amp, **(engine.amp_kwargs if use_amp else {})):
            u, v, alpha = engine.network(x)  # training-mode forward = features(x)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            ratio = None
            if core.contrastive:
                z = core.encode(x_noisy)
                loss = engine.loss_function(u, v, z, alpha)
                if hasattr(engine.loss_function, "scale_terms"):
                    with torch.no_grad():
                        ratio = engine.loss_function.scale_terms(u, v, z)[2].float().mean(dim=0).cpu()
            else:
                loss = engine.loss_function(u, v, alpha)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {engine.state.iteration}")
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        alpha_mean = alpha.detach().float().mean(dim=0).cpu()
        for name, value in zip(alpha_metric_names(alpha_mean.numel()), alpha_mean.tolist()):
            engine.state.metrics[name] = value
        output = {CommonKeys.LOSS: loss.detach(), "alpha": alpha_mean}
        if ratio is not None:
            output["ratio"] = ratio
            engine.state.metrics.update(zip(ratio_metric_names(ratio.numel()), ratio.tolist()))
        # a one-item list of dicts, like MONAI's decollated outputs, so that the default
        # ``from_engine(["loss"], first=True)`` of StatsHandler/MLFlowHandler finds the loss
        return [output]


def train_log_values(output) -> dict:
    """``{"loss": float, "alpha_1": ..., "alpha_K": ...}`` from a :class:`SCRDTrainStep` output (StatsHandler's
    ``output_transform``)."""
    out = output[0] if isinstance(output, (list, tuple)) else output
    values = {"loss": float(out[CommonKeys.LOSS])}
    values.update(zip(alpha_metric_names(len(out["alpha"])), (float(a) for a in out["alpha"])))
    if "ratio" in out:
        values.update(zip(ratio_metric_names(len(out["ratio"])), (float(r) for r in out["ratio"])))
    return values
