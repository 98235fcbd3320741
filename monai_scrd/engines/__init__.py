"""MONAI/Ignite engines and handlers for training, evaluating and running SCRD (used by ``bundles/scrd``).

Scoring itself is :mod:`monai_scrd.scoring` (one scorer for evaluation, inference, the registry and MONAI Label)."""

from .evaluation import SCRDEvalStep
from .handlers import (
    IterationLimit,
    MLflowRunExtras,
    ProgressLog,
    ScoreCollector,
    TrainerCheckpointLoader,
    TrainerCheckpointSaver,
    TrainingFinalizer,
    find_mlflow_run,
    fit_threshold,
)
from .inference import AnomalyInference
from .training import SCRDTrainStep, alpha_metric_names, train_log_values
from .utils import (
    as_bool,
    find_bundle_root,
    is_rank0,
    latest_checkpoint,
    list_inputs,
    load_model_weights,
    resolve_pretrained,
    resolve_resume,
    training_items,
    unwrap,
)

__all__ = [
    "SCRDTrainStep",
    "SCRDEvalStep",
    "IterationLimit",
    "ProgressLog",
    "MLflowRunExtras",
    "ScoreCollector",
    "TrainingFinalizer",
    "TrainerCheckpointSaver",
    "TrainerCheckpointLoader",
    "load_model_weights",
    "AnomalyInference",
    "find_mlflow_run",
    "fit_threshold",
    "alpha_metric_names",
    "train_log_values",
    "as_bool",
    "find_bundle_root",
    "is_rank0",
    "latest_checkpoint",
    "list_inputs",
    "training_items",
    "resolve_pretrained",
    "resolve_resume",
    "unwrap",
]
