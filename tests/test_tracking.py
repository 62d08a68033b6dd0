"""Where runs go: the repository's store, also from DVC's experiment copies."""

from pathlib import Path

from attnkd.tracking import store_root, tracking_uri


def test_experiment_copies_log_to_the_users_repository():
    assert store_root(Path("/home/u/proj/.dvc/tmp/exps/tmpab12/repo")) == Path("/home/u/proj")
    assert store_root(Path("/home/u/proj/.dvc/tmp/exps/tmpab12")) == Path("/home/u/proj")
    assert store_root(Path("/home/u/proj")) == Path("/home/u/proj")


def test_tracking_uri_prefers_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / ".dvc/tmp/exps/tmpx"))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
