"""Scoring inside MONAI evaluators: the evaluator's iteration runs the one scorer (:class:`monai_scrd.scoring.Scorer`)
on a batch of files prepared by a :class:`monai_scrd.scoring.ScoringDataset` loader."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SCRDEvalStep"]


class SCRDEvalStep:
    """Evaluator ``iteration_update``: scores a batch of :class:`~monai_scrd.scoring.Prepared` files (a loader of a
    ``ScoringDataset`` collated with ``collate_prepared``) with ``scorer``, whose network is the evaluator's.

    Output: ``{"results": [ScoreResult, ...]}`` (one per file; unreadable files carry their error), read by
    :class:`~monai_scrd.engines.ScoreCollector`.

    Args:
        scorer: the :class:`~monai_scrd.scoring.Scorer`.
    """

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def __call__(self, engine, batchdata: Sequence) -> dict:
        return {"results": self.scorer.score_prepared(list(batchdata))}
