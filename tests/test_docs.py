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
