"""MLflow tracking: one run per training stage, in one store for `dvc repro` and `dvc exp run`.

The store is MLFLOW_TRACKING_URI when set (e.g. a team's `mlflow server`), else a SQLite file
`mlflow.db` at the root of the user's repository, so runs land in the same place whichever
command started them: `dvc repro`, `dvc exp run`, or a queued or `--temp` experiment, which DVC
runs in a copy of the repository under `<repo>/.dvc/tmp/exps/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

EXPERIMENT = "attnkd"


def repo_root() -> Path:
    """The repository the stage runs in (DVC_ROOT, which DVC sets for every stage, or the cwd)."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def store_root(root: Path) -> Path:
    """The user's repository: for a DVC experiment copy `<repo>/.dvc/tmp/exps/<...>/...`, `<repo>`."""
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(repo_root()) / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database file; a server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str, seed: int) -> dict[str, str]:
    """Provenance of a run: commit, DVC stage and experiment, seed and library versions."""
    import torch
    import transformers

    import attnkd

    return {
        "git.commit": git_commit(repo_root()),
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "seed": str(seed),
        "version.attnkd": attnkd.__version__,
        "version.torch": torch.__version__,
        "version.transformers": transformers.__version__,
        "version.python": platform.python_version(),
    }


class Run:
    """The slice of the MLflow API the stages use. Per-step metrics are buffered with their step
    and time and written in batches (every 5 s, at 900 values, and when the run closes), one
    store transaction per batch: MLflow's own asynchronous logging would cost every run a wait of
    up to a second for its queue's poll when it ends."""

    FLUSH_SECONDS = 5.0
    FLUSH_ITEMS = 900  # under the 1,000 metrics a log_batch call takes

    def __init__(self, mlflow, run_id: str):
        from mlflow.entities import Metric

        self._mlflow, self._client, self._metric = mlflow, mlflow.MlflowClient(), Metric
        self.id = run_id
        self._pending: list = []
        self._flushed = time.monotonic()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [self._metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._pending) >= self.FLUSH_ITEMS or time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics."""
        for start in range(0, len(self._pending), 1000):
            self._client.log_batch(self.id, metrics=self._pending[start : start + 1000])
        self._pending, self._flushed = [], time.monotonic()

    def log_artifact(self, path: Path) -> None:
        """A file, or a folder's files under its name."""
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=Path(path).name)
        else:
            self._mlflow.log_artifact(str(path))


@contextlib.contextmanager
def mlflow_run(stage: str, run_name: str, params: dict, seed: int, run_id: str | None = None) -> Iterator[Run]:
    """Open a run in the configured store with flattened params and provenance tags; with
    `run_id` (a resumed stage), continue that run when the store has it."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_root(uri))
    mlflow.set_experiment(EXPERIMENT)
    if run_id and mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name(EXPERIMENT).experiment_id], f"attributes.run_id = '{run_id}'"):
        kwargs = {"run_id": run_id}
    else:
        kwargs = {"run_name": run_name}
    with mlflow.start_run(tags=run_tags(stage, seed), **kwargs) as active:
        mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
        run = Run(mlflow, active.info.run_id)
        try:
            yield run
        finally:
            run.flush()


class NoRun:
    """What processes other than rank 0 log to: nothing."""

    id = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def flush(self) -> None:
        pass


def stage_run(main: bool, *args, **kwargs):
    """mlflow_run(*args, **kwargs) in the main process; elsewhere a run that logs nothing."""
    return mlflow_run(*args, **kwargs) if main else contextlib.nullcontext(NoRun())


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts to dotted keys (`distill.temperature`); lists and scalars are leaves."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def log_summary_run(params, summary: dict, files: list[Path], figures_dir: Path, metric: str = "accuracy") -> None:
    """A summary run in MLflow: per-method means as metrics, the report and its figures as artifacts."""
    record = {"seed": params.seed, "student_seeds": params.student_seeds, "students": {n: params.students[n].model_dump() for n in params.distill.students},
              "methods": {m: w.weights() for m, w in params.methods.items()}}
    with mlflow_run("report", "report", record, params.seed) as run:
        metrics = {}
        for row, s in summary.items():
            key = row.replace(" ", "/")
            metrics |= {f"{key}/{metric}_mean": s[metric]["mean"], f"{key}/speed_up": s["speed_up"]}
            if "vs_ce" in s:
                metrics[f"{key}/p_vs_ce"] = s["vs_ce"]["p_value"]
        run.log_metrics(metrics, 0)
        for path in files:
            run.log_artifact(path)
        run.log_artifact(figures_dir)
