"""MONAI/Ignite engines and handlers for training, evaluating and running SCRD (used by ``bundles/scrd``).

Attributes are imported lazily, so that ``monai_scrd.engines.training`` (the one training step, also used by the
benchmarks) imports without the scoring, registry and MLflow stack.
"""

from __future__ import annotations

from monai_scrd._lazy import lazy_exports

_EXPORTS = {
    "evaluation": ["ErrorReport", "EvalCollate", "SafeDataset", "SCRDEvalStep"],
    "handlers": [
        "MaxIterationsHandler",
        "MLflowExtrasHandler",
        "ScoreCollector",
        "TrainerCheckpointLoader",
        "TrainerCheckpointSaver",
        "TrainingFinalizer",
        "find_mlflow_handler",
        "fit_threshold",
        "load_threshold",
    ],
    "inference": ["AnomalyInference"],
    "selection": ["SyntheticValidation", "synthetic_validation_metrics"],
    "training": ["SCRDTrainStep", "alpha_metric_names", "ratio_metric_names", "train_log_values"],
    "utils": [
        "as_bool",
        "epochs_for",
        "find_bundle_root",
        "is_rank0",
        "latest_checkpoint",
        "list_inputs",
        "load_datalist",
        "load_model_weights",
        "training_items",
        "resolve_pretrained",
        "resolve_resume",
        "unwrap",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
