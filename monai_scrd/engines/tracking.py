"""The MLflow extras that MONAI's default tracking does not log: run parameters, per-scale alpha, the final metrics and
the run's files, into the run MONAI's MLFlowHandler opened."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
from ignite.engine import Engine, Events

from monai_scrd.engines.utils import is_rank0

__all__ = ["MLflowRunExtras", "find_mlflow_run"]


def find_mlflow_run(tracking_uri: str | None, experiment_name: str, run_name: str):
    """``(MlflowClient, run_id)`` of the run named ``run_name`` in ``experiment_name`` (the run MONAI's MLFlowHandler
    opens with the bundle's ``run_name``), or None when there is none, i.e. when tracking is off. As MONAI's handler,
    ``$MLFLOW_TRACKING_URI`` wins over ``tracking_uri``; a local SQLite store that does not exist is not created."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if not uri or not run_name:
        return None
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///"):]):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1)
    return (client, runs[0].info.run_id) if runs else None


class MLflowRunExtras:
    """Logs what MONAI's ``--tracking mlflow`` handlers do not, into the same run (found by the bundle's ``run_name``
    with MLflow's public client; nothing happens when tracking is off): the run parameters (once), the per-scale alpha
    every ``log_interval`` iterations (``engine.state.metrics`` keys starting with ``metric_prefixes``), and at
    completion the final metrics and the files in ``engine.state.scrd_artifacts`` (final weights, threshold, ROC
    curve, histogram, metrics.json, scores.csv). In the handler list it comes before the MLflow handlers that
    ``--tracking`` appends, so its completion step runs before they close the run.

    Args:
        tracking_uri, experiment_name, run_name: as given to MONAI's MLFlowHandler (the bundle's top-level values).
        params: run parameters.
        metric_prefixes: ``engine.state.metrics`` logged per iteration.
        log_interval: iterations between those metrics.
        close_run: end the run at completion (the evaluator's MLflow handler does not).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str,
        params: Mapping | None = None,
        metric_prefixes: Sequence[str] = ("alpha_",),
        log_interval: int = 1,
        close_run: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.params = {k: str(v) for k, v in dict(params or {}).items()}
        self.metric_prefixes = tuple(metric_prefixes)
        self.log_interval = max(1, int(log_interval))
        self.close_run = close_run
        self._run = None
        self._params_logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_interval), self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _client(self):
        if self._run is None and is_rank0():
            self._run = find_mlflow_run(self.tracking_uri, self.experiment_name, self.run_name)
        return self._run

    def _log(self, metrics: Mapping, step: int) -> None:
        from mlflow.entities import Metric, Param

        client, run_id = self._run
        now = int(time.time() * 1000)
        params = []
        if not self._params_logged:
            existing = client.get_run(run_id).data.params
            params = [Param(k, v) for k, v in self.params.items() if k not in existing]
            self._params_logged = True
        values = [Metric(k, float(v), now, step) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
        if params or values:
            client.log_batch(run_id, metrics=values, params=params)

    def _iteration(self, engine: Engine) -> None:
        if self._client() is None:
            return
        self._log({k: v for k, v in engine.state.metrics.items() if k.startswith(self.metric_prefixes)}, engine.state.iteration)

    def _completed(self, engine: Engine) -> None:
        if self._client() is None:
            return
        client, run_id = self._run
        self._log(dict(engine.state.metrics), engine.state.iteration)
        for path in getattr(engine.state, "scrd_artifacts", []):
            if path and os.path.isfile(path):
                client.log_artifact(run_id, path)
        if self.close_run:
            client.set_terminated(run_id)
