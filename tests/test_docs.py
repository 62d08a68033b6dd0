"""The result tables in README.md and docs/results.md are generated from reports/, never pasted."""

import shutil
import subprocess
import sys

from conftest import REPO

TOOL = [sys.executable, str(REPO / "tools/results.py")]


def test_the_docs_tables_are_those_of_the_recorded_reports():
    proc = subprocess.run([*TOOL, "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_pasted_number_is_caught(tmp_path):
    for name in ("README.md", "docs/results.md", "reports/report.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    assert subprocess.run([*TOOL, "--root", str(tmp_path)], capture_output=True).returncode == 0  # regenerate for this copy
    assert subprocess.run([*TOOL, "--check", "--root", str(tmp_path)], capture_output=True).returncode == 0
    readme = (tmp_path / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| kd_at "))
    (tmp_path / "README.md").write_text(readme.replace(row, row.replace("3 ", "4 ", 1)))
    proc = subprocess.run([*TOOL, "--check", "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "README.md" in proc.stderr


def test_the_lock_and_reports_hold_only_what_the_pipeline_makes():
    """No dvc.lock entry of a stage that no longer exists; every committed file under reports/ is an
    output of a stage (so none is left over from a renamed model)."""
    import yaml

    names = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(names)
    outs = [o["path"] for stage in lock.values() for o in stage.get("outs", [])]
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    strays = [f for f in tracked if f != "reports/.gitignore" and not any(f == o or f.startswith(o + "/") for o in outs)]
    assert not strays


def test_the_recorded_run_is_that_of_the_code_and_params_here():
    """dvc.lock pins the code and params of the recorded default run: a change to src/, a stage
    script or params.yaml must be re-recorded (`dvc repro`, or `dvc commit` when it provably changes
    no output), or the results in README and docs would no longer be those of this code."""
    import json

    import yaml

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    outs = {o["path"] for stage in lock.values() for o in stage.get("outs", [])}
    made = lambda dep: any(dep == o or o.startswith(dep + "/") or dep.startswith(o + "/") for o in outs)  # noqa: E731
    status = json.loads(subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    changed = {stage: dep for stage, entries in status.items() for e in entries if isinstance(e, dict)
               for dep in e.get("changed deps", {}) if not made(dep)}  # code, params, source data; not the artifacts a fresh clone lacks
    assert not changed
