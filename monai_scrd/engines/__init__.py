"""MONAI/Ignite engines and handlers for training, evaluating and running SCRD (used by ``bundles/scrd``).
Scoring itself is :mod:`monai_scrd.scoring` (one scorer for evaluation, inference, the registry and MONAI Label).
"""

from __future__ import annotations

from monai_scrd.engines.checkpoints import TrainerCheckpointLoader, TrainerCheckpointSaver
from monai_scrd.engines.collector import ScoreCollector
from monai_scrd.engines.evaluation import SCRDEvalStep
from monai_scrd.engines.finalizer import ModelWriter, ScoringFitter
from monai_scrd.engines.inference import AnomalyInference
from monai_scrd.engines.progress import IterationLimit, ProgressLog, ValidationLog
from monai_scrd.engines.selection import SyntheticValidation, synthetic_validation_metrics
from monai_scrd.engines.settings import (
    check_environment,
    check_resume,
    check_settings,
    prepare_output_dir,
    run_outputs,
)
from monai_scrd.engines.tracking import MLflowRunExtras, find_mlflow_run
from monai_scrd.engines.training import SCRDTrainStep, alpha_metric_names, ratio_metric_names, train_log_values
from monai_scrd.engines.utils import (
    as_bool,
    find_bundle_root,
    is_rank0,
    latest_checkpoint,
    list_inputs,
    load_model_weights,
    resolve_iterations,
    resolve_pretrained,
    resolve_resume,
    split_datalist,
    training_items,
    validation_items,
    unwrap,
    one_line_errors,
    TrainingInterrupted,
)

__all__ = [
    "SCRDEvalStep",
    "TrainerCheckpointLoader",
    "TrainerCheckpointSaver",
    "ScoreCollector",
    "ScoringFitter",
    "ModelWriter",
    "IterationLimit",
    "ProgressLog",
    "ValidationLog",
    "MLflowRunExtras",
    "find_mlflow_run",
    "AnomalyInference",
    "SyntheticValidation",
    "synthetic_validation_metrics",
    "check_settings",
    "check_environment",
    "check_resume",
    "prepare_output_dir",
    "run_outputs",
    "SCRDTrainStep",
    "alpha_metric_names",
    "ratio_metric_names",
    "train_log_values",
    "as_bool",
    "find_bundle_root",
    "is_rank0",
    "latest_checkpoint",
    "list_inputs",
    "load_model_weights",
    "resolve_iterations",
    "resolve_pretrained",
    "resolve_resume",
    "split_datalist",
    "training_items",
    "validation_items",
    "unwrap",
    "one_line_errors",
    "TrainingInterrupted",
]
