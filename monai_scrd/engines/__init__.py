"""MONAI/Ignite engines and handlers for training, evaluating and running SCRD (used by ``bundles/scrd``).
Scoring itself is :mod:`monai_scrd.scoring` (one scorer for evaluation, inference, the registry and MONAI Label).

Attributes are imported lazily, so that ``monai_scrd.engines.training`` (the one training step, also used by the
benchmarks) imports without the scoring, registry and MLflow stack.
"""

from __future__ import annotations

from monai_scrd._lazy import lazy_exports

_EXPORTS = {
    "evaluation": ["SCRDEvalStep"],
    "checkpoints": ["TrainerCheckpointLoader", "TrainerCheckpointSaver"],
    "collector": ["ScoreCollector"],
    "finalizer": ["TrainingFinalizer"],
    "progress": ["IterationLimit", "ProgressLog", "ValidationLog"],
    "tracking": ["MLflowRunExtras", "find_mlflow_run"],
    "inference": ["AnomalyInference"],
    "selection": ["SyntheticValidation", "synthetic_validation_metrics"],
    "settings": ["check_settings", "check_environment", "check_resume", "prepare_output_dir", "run_outputs"],
    "training": ["SCRDTrainStep", "alpha_metric_names", "ratio_metric_names", "train_log_values"],
    "utils": [
        "as_bool",
        "find_bundle_root",
        "is_rank0",
        "latest_checkpoint",
        "list_inputs",
        "load_model_weights",
        "resolve_iterations",
        "resolve_pretrained",
        "resolve_resume",
        "training_items",
        "validation_items",
        "unwrap",
        "one_line_errors",
        "TrainingInterrupted",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
