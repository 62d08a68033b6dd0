"""The real `dvc repro` in a temporary git copy of the repo, on 60 real articles and a tiny teacher."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
import time

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, sh


@pytest.fixture(scope="module")
def repo(tiny_repo):
    return tiny_repo


METHODS = ["ce", "kd", "at", "kd_at"]
COMPARE = "dvc exp show --only-changed --keep '.*\\.(acc|em|f1|chrf|bleu|delta|p)$' --drop '.*/|State|Executor'"  # baseline and experiments on one screen
STUDENTS = [f"small-{m}-s{seed}" for m in METHODS for seed in (1, 2)]  # tiny params: student_seeds [1, 2]


def test_repro_builds_every_artifact(repo):
    root, _, log = repo
    for stage in ["prepare", "teacher", "plan", "extract", *[f"distill@small-{m}-{seed}" for m in METHODS for seed in (1, 2)], "evaluate", "report"]:
        assert f"Running stage '{stage}'" in log
    for path in ["data/prepared/train.parquet", "data/models/teacher/model.safetensors", "data/signals/manifest.json",
                 "reports/report.md", "reports/report.html", "reports/summary.json", "reports/figures/curves.png"]:
        assert (root / path).is_file(), path
    for name in STUDENTS:
        assert (root / f"data/students/{name}/model.safetensors").is_file()
        assert (root / f"reports/train/{name}.json").is_file() and (root / f"reports/metrics/{name}.json").is_file()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert {"prepare", "teacher", "extract", "distill@small-kd_at-2", "evaluate", "report"} <= set(lock["stages"])


def test_report_table_has_teacher_and_four_methods(repo):
    root, _, _ = repo
    text = (root / "reports/report.md").read_text()
    quality = text.split("## Quality on the test split")[1].split("\n## ")[0]
    rows = [l.split("|")[1].strip() for l in quality.splitlines() if l.startswith("|") and "---" not in l]
    assert rows == ["model", "teacher", *METHODS]
    summary = json.loads((root / "reports/summary.json").read_text())
    for m in METHODS:
        accs = [json.loads((root / f"reports/metrics/small-{m}-s{seed}.json").read_text())["accuracy"] for seed in (1, 2)]
        assert summary[m]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-6)
        assert f"| {m} " in text and f"{summary[m]['accuracy']['mean']:.3f} ± " in text


def test_metrics_and_plots_are_declared_to_dvc(repo):
    root, env, _ = repo
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], root, env))
    assert {k for rev in shown.values() for k in rev["data"]} == {"reports/headline.json"}  # the one metrics file
    summary = json.loads((root / "reports/summary.json").read_text())
    headline = next(iter(shown.values()))["data"]["reports/headline.json"]["data"]
    assert headline["kd_at"] == {"acc": round(summary["kd_at"]["accuracy"]["mean"], 4), "delta": round(100 * summary["kd_at"]["vs_ce"]["delta"], 2),
                                 "p": round(summary["kd_at"]["vs_ce"]["p_value"], 3)}
    table = sh(["dvc", "metrics", "show"], root, env | {"COLUMNS": "200"})
    assert max(map(len, table.splitlines())) <= 200 and "…" not in table
    detail = sh(["dvc", "metrics", "show", "reports/metrics/small-kd_at-s2.json"], root, env)  # the per-model files, on request
    assert "per_class.sport.f1" in detail
    out = sh(["dvc", "plots", "show", "--json"], root, env)
    for path in ("reports/figures/curves.png", "reports/figures/accuracy_latency.png", "reports/accuracy_latency.csv",
                 "reports/predictions/small-kd_at-s1.csv", "reports/curves/small-kd_at-s1.tsv"):
        assert path in out, path


def test_report_html_renders_in_a_headless_browser(repo, tmp_path):
    """Debian's chromium opens the self-contained report: the page is not blank, every image
    decodes (natural width > 0), and the tables are there."""
    root, _, _ = repo
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: `apt-get install chromium` (.ci/run does)"
    page = tmp_path / "report.html"
    probe = ('<script>addEventListener("load",()=>{const p=document.createElement("pre");p.id="probe";'
             'p.textContent=JSON.stringify({img:[...document.images].map(i=>i.naturalWidth),tables:document.querySelectorAll("table").length});'
             'document.body.append(p)})</script></body>')
    page.write_text((root / "reports/report.html").read_text().replace("</body>", probe))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1))
    figures = len(list((root / "reports/figures").iterdir()))
    assert len(found["img"]) == figures >= 4 and all(w > 100 for w in found["img"]), found
    assert found["tables"] >= 6, found
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", (root / "reports/report.html").as_uri()], capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (2000, 1280) and image.std() > 20 and (image < 128).mean() > 0.01  # text and pictures, not a blank page


def test_mlflow_runs_land_in_the_repo_root_store(repo):
    root, _, _ = repo
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(["teacher", *[f"distill-{n}" for n in STUDENTS], "report"])
    assert {r.data.tags["dvc.stage"] for r in runs} == {"teacher", "report", *[f"distill@small-{m}-{seed}" for m in METHODS for seed in (1, 2)]}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert all(r.data.tags["git.commit"] == commit for r in runs)
    report = next(r for r in runs if r.info.run_name == "report")
    assert "report.html" in {a.path for a in mlflow.MlflowClient().list_artifacts(report.info.run_id)}


def test_second_repro_runs_nothing(repo):
    root, env, _ = repo
    log = sh(["dvc", "repro"], root, env)
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log


def test_dvc_reruns_only_what_a_changed_key_can_change(repo):
    """Each stage lists the exact params keys it reads: a key that cannot change a result leaves
    everything up to date; one method's weight makes only that method's students, evaluate and
    the report stale (and the plan, which then rewrites an identical file), never extract or
    another method; a new seed adds only its students."""
    root, env, _ = repo
    path = root / "params.yaml"
    original = path.read_text()

    def stale_after(**changes) -> set[str]:
        doc = yaml.safe_load(original)
        for key, value in changes.items():
            *parents, leaf = key.split("__")
            node = doc
            for k in parents:
                node = node[k]
            node[leaf] = value
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return set(json.loads(sh(["dvc", "status", "--json"], root, env)))

    try:
        assert stale_after(teacher__checkpoint_every=7, distill__checkpoint_every=7, teacher__eval_batch_size=3, distill__eval_batch_size=3) == set()
        assert stale_after(methods__kd_at__attn_kl=2.0) == {"plan", "distill@small-kd_at-1", "distill@small-kd_at-2", "evaluate", "report"}
        assert stale_after(student_seeds=[1, 2, 3]) == {*(f"distill@small-{m}-3" for m in METHODS), "evaluate", "report"}
    finally:
        path.write_text(original)


def test_forced_reruns_give_identical_outputs(repo):
    """No timestamps or run ids in cached outputs, deterministic training on CPU: re-running a
    stage reproduces its outputs bit for bit, so DVC's run cache and `dvc exp` never redo work."""
    root, env, _ = repo
    def outs() -> dict:
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        return {name: [(o["path"], o["md5"]) for o in stage.get("outs", [])] for name, stage in lock.items()}
    stages = ("prepare", "teacher", "extract", "distill@small-kd_at-1", "report")
    before = outs()
    log = sh(["dvc", "repro", "-f", "-s", *stages], root, env)  # each stage alone, forced, in one dvc call
    assert all(f"Running stage '{stage}'" in log for stage in stages) and log.count("Running stage") == len(stages)
    after = outs()
    assert all(after[s] == before[s] for s in stages)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)


def test_experiment_with_a_changed_knob_is_compared(repo):
    """One method's soft-label weight: only that method's students train again."""
    root, env, _ = repo
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "baseline results"], root, env)
    log = sh(["dvc", "exp", "run", "-n", "t4", "-S", "methods.kd.kd=0.25"], root, env)
    assert "Running stage 'distill@small-kd-1'" in log and "Running stage 'distill@small-kd-2'" in log
    assert not any(f"Running stage '{s}" in log for s in ("teacher", "extract", "distill@small-ce", "distill@small-at", "distill@small-kd_at"))
    header, *shown = csv.reader(sh(["dvc", "exp", "show", "--csv"], root, env).splitlines())
    name = lambda row: row[header.index("Experiment")] or row[header.index("rev")]  # noqa: E731 (an experiment, or workspace / the branch)
    weights = {name(row): row[header.index("methods.kd.kd")] for row in shown}
    assert weights["t4"] == "0.25" and "0.5" in weights.values()
    headline = [h for h in header if h.endswith((".acc", ".delta", ".p"))]
    assert len(headline) == 1 + 4 + 2 * 3  # teacher and four methods' accuracy; three methods' delta and p vs ce
    assert COMPARE in (REPO / "README.md").read_text()  # the documented comparison command
    lines = sh(["dvc", *shlex.split(COMPARE)[1:], "--no-pager"], root, env | {"COLUMNS": "200"}).splitlines()  # a 200-column terminal
    assert max(map(len, lines)) <= 200 and "…" not in "".join(lines)
    assert next(l for l in lines if "Experiment" in l).split() == ["Experiment", "Created", *headline, "methods.kd.kd"]
    for row in shown:
        line = next(l for l in lines if f"[{name(row)}]" in l or l.split()[:1] == [name(row)])
        *cells, weight = line.split()[-len(headline) - 1:]
        assert [float(c) for c in cells] == [float(row[header.index(h)]) for h in headline] and weight == weights[name(row)], line
    params = sh(["dvc", "params", "diff", "HEAD", "t4"], root, env)
    assert "methods.kd.kd" in params and "0.25" in params
    assert "kd.acc" in sh(["dvc", "metrics", "diff", "--all", "HEAD", "t4"], root, env)  # --all: the tiny students may tie
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    assert {r.data.tags["dvc.experiment"] for r in runs if r.data.tags["dvc.experiment"]} == {"t4"}


def test_queued_experiment_logs_to_the_repo_store_and_diffs(repo):
    """Queued runs execute in a copy under .dvc/tmp/exps; their MLflow runs must still land in
    the repo's mlflow.db, tagged with the experiment name."""
    root, env, _ = repo
    sh(["dvc", "exp", "run", "--queue", "-n", "q3", "-S", "report.bootstrap_samples=300"], root, env)  # re-runs the report only
    sh(["dvc", "queue", "start"], root, env)
    deadline = time.time() + 420
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], root, env)
        if "q3" in status and ("Success" in status or "Failed" in status):
            break
        time.sleep(1)
    if "Running" in status:
        sh(["dvc", "queue", "stop", "--kill"], root, env)
    assert "Success" in status, status + sh(["dvc", "queue", "logs", "q3"], root, env)
    assert not list((root / ".dvc/tmp/exps").rglob("mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    queued = [r for r in runs if r.data.tags["dvc.experiment"] == "q3"]
    assert [r.info.run_name for r in queued] == ["report"]
    diff = sh(["dvc", "exp", "diff", "--all", "HEAD", "q3"], root, env)
    assert "report.bootstrap_samples" in diff and "kd_at.acc" in diff
    lines = sh(["dvc", *shlex.split(COMPARE)[1:], "--no-pager"], root, env | {"COLUMNS": "200"}).splitlines()  # now two experiments
    assert max(map(len, lines)) <= 200 and "…" not in "".join(lines) and sum("[t4]" in l or "[q3]" in l for l in lines) == 2, "\n".join(lines)
    assert {"methods.kd.kd", "report.bootstrap_samples"} <= set(next(l for l in lines if "Experiment" in l).split())
    plots = sh(["dvc", "plots", "diff", "HEAD", "q3", "--json"], root, env)
    assert "reports/curves/small-kd_at-s1.tsv" in plots and "reports/figures/accuracy_latency.png" in plots
