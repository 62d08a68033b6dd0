"""Bad input, collected: each case runs a real entry script on a broken data file, params value
or upstream artifact and must exit 2 with one line naming the culprit, show no traceback (only
ATTNKD_DEBUG=1 does), and write nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from profiles import merge
from conftest import run_pipeline, run_script, tiny_params


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir) -> Path:
    """Good upstream artifacts to break copies of: the tiny pipeline with one student."""
    root = tmp_path_factory.mktemp("chain")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}}, student_seeds=[1, 2])))
    run_pipeline(root, root / "params.yaml")
    return root


def params(chain: Path, tmp: Path, change: dict | None = None, text: str | None = None) -> Path:
    """The chain's params with `change` merged in (or raw `text`), written to tmp."""
    path = tmp / "params.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(merge(yaml.safe_load((chain / "params.yaml").read_text()), change or {})))
    return path


def copy(chain: Path, tmp: Path, name: str) -> Path:
    shutil.copytree(chain / name, tmp / name)
    return tmp / name


# each stage's command line, with outputs in tmp
def prepare(p, tmp):
    return ["prepare", "--params", p, "--out", tmp / "out-prepared", "--report", tmp / "out-data.json"]


def teacher(p, prepared, tmp):
    return ["teacher", "--params", p, "--prepared", prepared, "--out", tmp / "out-teacher", "--metrics", tmp / "out-t.json", "--curve", tmp / "out-t.tsv"]


def extract(p, prepared, teacher_dir, tmp):
    return ["extract", "--params", p, "--prepared", prepared, "--teacher", teacher_dir, "--out", tmp / "out-signals"]


def distill(p, prepared, teacher_dir, signals, tmp, method="ce"):
    return ["distill", "--params", p, "--student", "small", "--method", method, "--seed", 1, "--prepared", prepared, "--teacher", teacher_dir, "--signal-store", signals,
            "--out", tmp / "out-student", "--metrics", tmp / "out-s.json", "--curve", tmp / "out-s.tsv"]


def evaluate(p, students, chain, tmp):
    return ["evaluate", "--params", p, "--prepared", chain / "prepared", "--teacher", chain / "models/teacher", "--students", students,
            "--metrics-dir", tmp / "out-metrics", "--predictions-dir", tmp / "out-predictions", "--attention", tmp / "out-attention.json"]


def report(p, metrics_dir, chain, tmp, predictions_dir=None):
    return ["report", "--params", p, "--metrics-dir", metrics_dir, "--predictions-dir", predictions_dir or chain / "predictions", "--curves-dir", chain / "curves",
            "--prepared", chain / "prepared", "--data-report", chain / "data.json", "--store", chain / "signals/manifest.json", "--attention", chain / "attention.json",
            "--out", tmp / "out/report.md", "--summary", tmp / "out/summary.json", "--headline", tmp / "out/headline.json", "--points", tmp / "out/points.csv"]


# ---- data files (prepare) --------------------------------------------------------------------

def tsv(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def good_rows(n: int = 20) -> str:
    return "".join(f"sentence number {i}\t{i % 2}\n" for i in range(n))


BASE = {"source": "files", "splits": {"train": "train.tsv", "test": "dev.tsv"}, "text_column": "sentence", "quoting": "none"}


def bad_missing_file(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    return {}, r"dev.tsv: file not found"


def bad_empty_file(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "")
    return {}, r"dev.tsv: empty file"


def bad_header_only(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "sentence\tlabel\n")
    return {}, r"dev.tsv: a header but no data rows"


def bad_misnamed_column(src):
    tsv(src / "train.tsv", "sentense\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {}, r"train.tsv: no column 'sentence' \(params data.text_column\); the file has columns \['sentense', 'label'\]"


def bad_params_column(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {"text_pair_column": "sentence2"}, r"train.tsv: no column 'sentence2' \(params data.text_pair_column\)"


def bad_unknown_label(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(4) + "a new sentence\t7\n")
    return {}, r"dev.tsv: row 6, column 'label': label '7' does not occur in the training data"


def bad_one_class(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + "".join(f"sentence {i}\t1\n" for i in range(20)))
    tsv(src / "dev.tsv", "sentence\tlabel\n" + "other\t1\n")
    return {}, r"train.tsv: column 'label' has one class \('1'\)"


def bad_utf8(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows())
    (src / "dev.tsv").write_bytes(b"sentence\tlabel\nfine\t0\ncaf\xe9 au lait\t1\n")
    return {"decode": "strict"}, r"dev.tsv: line 3: not valid UTF-8 at byte 3"


def bad_ragged_row(src):
    tsv(src / "train.tsv", "sentence\tlabel\n" + good_rows(5) + "one\textra\t1\n" + good_rows(5))
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {}, r"train.tsv: line 7: 3 fields, the header has 2 \(ragged row\)"


def bad_parquet_schema(src):
    pd.DataFrame({"sentence": [f"s {i}" for i in range(20)], "label": [[i % 2] for i in range(20)]}).to_parquet(src / "train.parquet")
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {"splits": {"train": "train.parquet", "test": "dev.tsv"}}, r"train.parquet: column 'label' has type list<element: int64>, expected string or integer"


def bad_not_parquet(src):
    tsv(src / "train.parquet", "sentence\tlabel\n" + good_rows())
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {"splits": {"train": "train.parquet", "test": "dev.tsv"}}, r"train.parquet: not a readable Parquet file"


def bad_json_line(src):
    (src / "train.jsonl").write_text('{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 1\n')
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {"splits": {"train": "train.jsonl", "test": "dev.tsv"}}, r"train.jsonl: line 2: not valid JSON"


def bad_unquoted_csv(src):
    (src / "train.csv").write_text('sentence,label\n"an open quote,0\n')
    tsv(src / "dev.tsv", "sentence\tlabel\n" + good_rows(6))
    return {"splits": {"train": "train.csv", "test": "dev.tsv"}, "quoting": "standard"}, r"train.csv: line \d+: .*data.quoting: none"


DATA_CASES = [bad_missing_file, bad_empty_file, bad_header_only, bad_misnamed_column, bad_params_column, bad_unknown_label,
       bad_one_class, bad_utf8, bad_ragged_row, bad_parquet_schema, bad_not_parquet, bad_json_line, bad_unquoted_csv]




def data_case(build):
    def case(chain, tmp):
        src = tmp / "src"
        src.mkdir()
        extra, pattern = build(src)
        data = {"limit_per_class": 0} | BASE | {"dir": str(src)} | extra
        return prepare(params(chain, tmp, {"data": data}), tmp), pattern

    case.__name__ = build.__name__
    return case


# ---- params -----------------------------------------------------------------------------------


def bad_params_unknown_key(chain, tmp):
    return prepare(params(chain, tmp, {"data": {"max_lenght": 64}}), tmp), r"params.yaml: data.max_lenght: unknown key"


def bad_params_wrong_type(chain, tmp):
    p = params(chain, tmp, {"distill": {"temperature": "hot"}})
    return distill(p, chain / "prepared", chain / "models/teacher", chain / "signals", tmp), r"params.yaml: distill.temperature: "


def bad_params_impossible_value(chain, tmp):
    return prepare(params(chain, tmp, {"data": {"val_fraction": 0.5, "test_fraction": 0.45}}), tmp), r"params.yaml: data: .*val_fraction \+ test_fraction"


def bad_params_unknown_loss(chain, tmp):
    p = params(chain, tmp, {"methods": {"ce": {"cee": 1.0}}})
    return distill(p, chain / "prepared", chain / "models/teacher", chain / "signals", tmp), r"params.yaml: methods.ce.cee: unknown key"


def bad_params_file_missing(chain, tmp):
    return prepare(tmp / "nowhere.yaml", tmp), r"nowhere.yaml: params file not found"


def bad_params_not_yaml(chain, tmp):
    return prepare(params(chain, tmp, text="data: [unclosed\n"), tmp), r"params.yaml: not valid YAML"


def bad_params_unknown_method(chain, tmp):
    return distill(chain / "params.yaml", chain / "prepared", chain / "models/teacher", chain / "signals", tmp, "nope"), r"methods.nope: no such method"


def bad_teacher_init_missing(chain, tmp):
    p = params(chain, tmp, {"teacher": {"init": str(tmp / "no-model")}})
    return teacher(p, chain / "prepared", tmp), r"teacher.init: .*no-model"


def bad_teacher_init_not_a_model(chain, tmp):
    (tmp / "empty-model").mkdir()
    p = params(chain, tmp, {"teacher": {"init": str(tmp / "empty-model")}})
    return teacher(p, chain / "prepared", tmp), r"empty-model"


# ---- upstream artifacts --------------------------------------------------------------------------


def bad_prepared_split_missing(chain, tmp):
    prepared = copy(chain, tmp, "prepared")
    (prepared / "train.parquet").unlink()
    return teacher(chain / "params.yaml", prepared, tmp), r"train.parquet: prepared split not found"


def bad_prepared_split_altered(chain, tmp):
    prepared = copy(chain, tmp, "prepared")
    df = pd.read_parquet(prepared / "train.parquet")
    df.loc[0, "label"] = (df.loc[0, "label"] + 1) % 5
    df.to_parquet(prepared / "train.parquet", index=False)
    return teacher(chain / "params.yaml", prepared, tmp), r"train.parquet: sha256 does not match meta.json"


def bad_prepared_meta_corrupt(chain, tmp):
    prepared = copy(chain, tmp, "prepared")
    (prepared / "meta.json").write_text('{"label_names": ')
    return teacher(chain / "params.yaml", prepared, tmp), r"meta.json: not valid JSON"


def bad_teacher_weights_altered(chain, tmp):
    model = copy(chain, tmp, "models/teacher")
    raw = bytearray((model / "model.safetensors").read_bytes())
    raw[-100] ^= 0xFF
    (model / "model.safetensors").write_bytes(bytes(raw))
    return extract(chain / "params.yaml", chain / "prepared", model, tmp), r"teacher/model.safetensors: sha256 does not match attnkd.json"


def bad_student_weights_missing(chain, tmp):
    students = copy(chain, tmp, "students")
    (students / "small-ce-s2/model.safetensors").unlink()
    return evaluate(chain / "params.yaml", students, chain, tmp), r"small-ce-s2/model.safetensors: listed in attnkd.json but missing"


def bad_student_seed_not_trained(chain, tmp):
    p = params(chain, tmp, {"student_seeds": [1, 2, 3]})
    return evaluate(p, chain / "students", chain, tmp), r"small-ce-s3: no such model dir; distill.students, methods and student_seeds name small-ce-s3"


def bad_params_repeated_seed(chain, tmp):
    p = params(chain, tmp, {"student_seeds": [1, 1]})
    return distill(p, chain / "prepared", chain / "models/teacher", chain / "signals", tmp), r"params.yaml: student_seeds: \[1, 1\] repeats a seed"


def bad_params_unknown_student(chain, tmp):
    p = params(chain, tmp, {"distill": {"students": ["small", "big"]}})
    return distill(p, chain / "prepared", chain / "models/teacher", chain / "signals", tmp), r"params.yaml: \(top level\): distill.students names 'big', which is not a key of students \(small\)"


def bad_params_narrow_student_copying_teacher_layers(chain, tmp):
    p = params(chain, tmp, {"students": {"small": {"hidden_size": 16, "init": "teacher"}}})
    return distill(p, chain / "prepared", chain / "models/teacher", chain / "signals", tmp), r"students: init 'teacher' copies teacher layers and needs hidden_size == 32 \(got 16\)"


def bad_params_relation_heads_not_dividing_the_teacher(chain, tmp):
    p = params(chain, tmp, {"students": {"small": {"hidden_size": 24}}, "methods": {"rel": {"qkv_relation": 1.0}}, "distill": {"relation_heads": 3}})
    return (["plan", "--params", p, "--teacher", chain / "models/teacher", "--out", tmp / "out-plan.json"],
            r"students.small with methods.rel: distill.relation_heads: 3 does not divide the teacher width 32")


def bad_predictions_missing(chain, tmp):
    predictions = copy(chain, tmp, "predictions")
    (predictions / "small-ce-s1.csv").unlink()
    return report(chain / "params.yaml", chain / "metrics", chain, tmp, predictions), r"small-ce-s1.csv: file not found"


def bad_signals_truncated(chain, tmp):
    signals = copy(chain, tmp, "signals")
    logits = signals / "logits.npy"
    logits.write_bytes(logits.read_bytes()[:-16])
    return distill(chain / "params.yaml", chain / "prepared", chain / "models/teacher", signals, tmp), r"logits.npy: .* bytes, manifest.json says .*truncated"


def bad_signals_manifest_missing(chain, tmp):
    signals = copy(chain, tmp, "signals")
    (signals / "manifest.json").unlink()
    return distill(chain / "params.yaml", chain / "prepared", chain / "models/teacher", signals, tmp), r"manifest.json: signal store manifest not found"


def bad_signals_from_another_teacher(chain, tmp):
    signals = copy(chain, tmp, "signals")
    manifest = json.loads((signals / "manifest.json").read_text())
    (signals / "manifest.json").write_text(json.dumps(manifest | {"teacher_sha256": "0" * 64}))
    return distill(chain / "params.yaml", chain / "prepared", chain / "models/teacher", signals, tmp, "ce"), r"manifest.json: extracted from a different teacher"


def bad_metrics_corrupt(chain, tmp):
    metrics = copy(chain, tmp, "metrics")
    (metrics / "small-ce-s1.json").write_text("{not json")
    return report(chain / "params.yaml", metrics, chain, tmp), r"small-ce-s1.json: not valid JSON"


def bad_non_finite_loss(chain, tmp):
    p = params(chain, tmp, {"teacher": {"learning_rate": 1.0e30}})
    return teacher(p, chain / "prepared", tmp), r"non-finite loss at step \d+ \(terms: ce\)"


CASES = [data_case(b) for b in DATA_CASES] + [
    bad_params_unknown_key, bad_params_wrong_type, bad_params_impossible_value, bad_params_unknown_loss, bad_params_file_missing,
    bad_params_not_yaml, bad_params_unknown_method, bad_teacher_init_missing, bad_teacher_init_not_a_model,
    bad_prepared_split_missing, bad_prepared_split_altered, bad_prepared_meta_corrupt, bad_teacher_weights_altered,
    bad_student_weights_missing, bad_signals_truncated, bad_signals_manifest_missing, bad_signals_from_another_teacher,
    bad_metrics_corrupt, bad_non_finite_loss, bad_student_seed_not_trained, bad_params_repeated_seed, bad_params_unknown_student, bad_params_narrow_student_copying_teacher_layers,
    bad_params_relation_heads_not_dividing_the_teacher, bad_predictions_missing,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("bad_") for c in CASES])
def test_bad_input_is_one_line_exit_2_and_no_output(chain, tmp_path, capsys, case):
    (stage, *args), pattern = case(chain, tmp_path)
    def files() -> set[Path]:  # all but the MLflow store, which records the failed run
        return {p for p in tmp_path.rglob("*") if "mlflow.db" not in p.name and "mlartifacts" not in p.parts}

    before = files()
    capsys.readouterr()
    rc = run_script(stage, *args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert rc == 2, err[-2000:]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert files() == before  # nothing written, not even partly


def test_debug_flag_shows_the_traceback(chain, tmp_path, monkeypatch):
    from attnkd.errors import UserError

    monkeypatch.setenv("ATTNKD_DEBUG", "1")
    (stage, *args), _ = bad_prepared_meta_corrupt(chain, tmp_path)
    with pytest.raises(UserError, match="meta.json: not valid JSON"):
        run_script(stage, *args)
