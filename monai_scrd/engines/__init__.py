"""MONAI/Ignite engines and handlers for training, evaluating and running SCRD (used by ``bundles/scrd``)."""

from .evaluation import ErrorReport, EvalCollate, SafeDataset, SCRDEvalStep
from .handlers import (
    MaxIterationsHandler,
    MLflowExtrasHandler,
    ScoreCollector,
    TrainerCheckpointLoader,
    TrainerCheckpointSaver,
    TrainingFinalizer,
    find_mlflow_handler,
    fit_threshold,
    load_threshold,
)
from .inference import AnomalyInference
from .selection import SyntheticValidation, synthetic_validation_metrics
from .training import SCRDTrainStep, alpha_metric_names, train_log_values
from .utils import (
    as_bool,
    epochs_for,
    find_bundle_root,
    is_rank0,
    latest_checkpoint,
    list_inputs,
    load_datalist,
    load_model_weights,
    training_items,
    resolve_pretrained,
    resolve_resume,
    unwrap,
)

__all__ = [
    "SCRDTrainStep",
    "SCRDEvalStep",
    "SafeDataset",
    "EvalCollate",
    "ErrorReport",
    "MaxIterationsHandler",
    "MLflowExtrasHandler",
    "ScoreCollector",
    "TrainingFinalizer",
    "TrainerCheckpointSaver",
    "TrainerCheckpointLoader",
    "load_model_weights",
    "AnomalyInference",
    "SyntheticValidation",
    "synthetic_validation_metrics",
    "find_mlflow_handler",
    "fit_threshold",
    "load_threshold",
    "alpha_metric_names",
    "train_log_values",
    "as_bool",
    "epochs_for",
    "find_bundle_root",
    "is_rank0",
    "latest_checkpoint",
    "list_inputs",
    "load_datalist",
    "training_items",
    "resolve_pretrained",
    "resolve_resume",
    "unwrap",
]
