"""Data sources through the real prepare entry script: every file format, the GLUE profiles on
slices of the real files, sentence pairs through every stage, the data report, the hub's offline
error. Bad inputs of every stage, `prepare`'s included, are in test_bad_inputs.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from profiles import command, load_profile, merge
from attnkd.params import load_params
from conftest import REPO, run_pipeline, run_script, shared_data, tiny_params


def glue_slice(dst: Path, name: str, rows: int) -> Path:
    """The header and first `rows` data lines of a GLUE train.tsv and dev.tsv, bytes unchanged."""
    out = dst / name
    out.mkdir(parents=True)
    for file in ("train.tsv", "dev.tsv"):
        lines = (shared_data("sst2/train.tsv") / name / file).read_bytes().split(b"\n")
        (out / file).write_bytes(b"\n".join(lines[: rows + 1]) + b"\n")
    return out


def params_with(model_dir: Path, data: dict, **sections) -> dict:
    doc = tiny_params(model_dir, **sections)
    return merge(doc, {"data": {"limit_per_class": 0} | data})


def prepare(tmp_path: Path, doc: dict) -> tuple[int, Path]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    rc = run_script("prepare", "--params", params, "--out", tmp_path / "prepared", "--report", tmp_path / "data.json")
    return rc, tmp_path / "prepared"


def read(prepared: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(prepared / f"{split}.parquet")


# ---- the GLUE profiles on the real files ---------------------------------------------------


@pytest.mark.parametrize("name, pair", [("sst2", False), ("mrpc", True), ("rte", True)])
def test_glue_profiles_prepare_the_real_files(tmp_path, tiny_model_dir, name, pair):
    profile = load_profile(name)["data"]
    src = glue_slice(tmp_path, name, 150)
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, profile | {"dir": str(src), "val_fraction": 0.1}))
    assert rc == 0
    meta = json.loads((prepared / "meta.json").read_text())
    report = json.loads((tmp_path / "data.json").read_text())
    assert meta["label_names"] == profile["label_names"] and meta["pair"] is pair
    assert report["splits"]["train"]["rows_read"] == 150 and report["splits"]["test"]["rows_read"] == 150
    assert report["carved_from_train"] == ["validation"]
    assert report["task"] == ("sentence pairs" if pair else "single sentences")
    test = read(prepared, "test")
    assert len(test) == 150 - report["splits"]["test"]["dropped_duplicates"]
    assert set(test["label"]) == {0, 1}
    assert any(t.any() for t in test["token_type_ids"]) is pair  # the second text is segment 1
    if pair:
        assert (test["text_pair"] != "").all()


def test_mrpc_keeps_quotes_as_text_and_reads_the_bom_header(tmp_path, tiny_model_dir):
    src = glue_slice(tmp_path, "mrpc", 40)
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, load_profile("mrpc")["data"] | {"dir": str(src), "val_fraction": 0.2}))
    assert rc == 0
    texts = pd.concat([read(prepared, s) for s in ("train", "validation")])
    assert texts["text"].str.contains('" the witness "', regex=False).any()  # GLUE line 1, quotes intact


def test_profile_command_round_trips_every_value_through_yaml():
    cmd = command("mrpc", [])
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "mrpc"]
    pairs = dict(arg.split("=", 1) for arg in cmd[6::2])
    assert yaml.safe_load(pairs["data.text_column"]) == "#1 String"
    assert yaml.safe_load(pairs["data.splits.validation"]) == ""
    assert yaml.safe_load(pairs["data.label_names"]) == ["not_paraphrase", "paraphrase"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_the_profile_command_gives_dvc_the_profiles_params(tmp_path, name):
    """DVC's own override code applied to params.yaml with the printed -S arguments gives exactly the
    params of profile_params (a profile's `methods` replaces the default set: `~methods.at`)."""
    from dvc.utils.hydra import apply_overrides
    from profiles import profile_params

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    cmd = command(name, [])
    apply_overrides(str(path), cmd[6::2])
    assert load_params(path) == profile_params(name)


# ---- formats, pairs, report ----------------------------------------------------------------


def toy_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "plot", "acting", 'a "quoted" word', "commas, inside", "naïve café"]
    return pd.DataFrame(
        {
            "id": range(n),
            "premise": [" ".join(rng.choice(words, 4)) + f" {i}" for i in range(n)],
            "hypothesis": [" ".join(rng.choice(words, 3)) for _ in range(n)],
            "gold": [["yes", "no", "maybe"][i % 3] for i in range(n)],
        }
    )


def write_as(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        df.to_parquet(path, index=False)


COLUMNS = {"text_column": "premise", "text_pair_column": "hypothesis", "label_column": "gold"}


@pytest.mark.parametrize("ext", ["tsv", "csv", "jsonl", "parquet"])
def test_every_format_prepares_the_same_data(tmp_path, tiny_model_dir, ext):
    src = tmp_path / "src"
    src.mkdir()
    write_as(toy_frame(), src / f"all.{ext}")
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, {"source": "files", "dir": str(src), "splits": {"train": f"all.{ext}"}} | COLUMNS))
    assert rc == 0
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["label_names"] == ["maybe", "no", "yes"] and meta["pair"] is True
    expected = toy_frame()
    train = read(prepared, "train")
    assert len(train) + len(read(prepared, "validation")) + len(read(prepared, "test")) == 60
    row = expected.set_index("premise").loc[train["text"].iloc[0]]
    assert train["text_pair"].iloc[0] == row["hypothesis"]
    assert meta["label_names"][train["label"].iloc[0]] == row["gold"]


def test_formats_agree_row_for_row(tmp_path, tiny_model_dir):
    frames = {}
    for ext in ("tsv", "csv", "jsonl", "parquet"):
        work = tmp_path / ext
        (work / "src").mkdir(parents=True)
        write_as(toy_frame(), work / "src" / f"all.{ext}")
        rc, prepared = prepare(work, params_with(tiny_model_dir, {"source": "files", "dir": str(work / "src"), "splits": {"train": f"all.{ext}"}} | COLUMNS))
        assert rc == 0
        frames[ext] = read(prepared, "test")[["text", "text_pair", "label"]]
    assert all(frames[e].equals(frames["tsv"]) for e in frames)


def test_data_report_counts_drops_overlap_and_lengths(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    src.mkdir()
    df = toy_frame()[["premise", "gold"]]
    train = pd.concat([df, df.iloc[:3], pd.DataFrame({"premise": ["", "no label"], "gold": ["yes", ""]})])
    write_as(train, src / "train.csv")
    write_as(df.iloc[:6], src / "dev.csv")  # also in train: removed from train
    data = {"source": "files", "dir": str(src), "splits": {"train": "train.csv", "test": "dev.csv"}, "text_column": "premise", "label_column": "gold", "max_length": 8}
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, data))
    assert rc == 0
    report = json.loads((tmp_path / "data.json").read_text())
    t = report["splits"]["train"]
    assert (t["rows_read"], t["dropped_empty_text"], t["dropped_missing_label"], t["dropped_duplicates"]) == (65, 1, 1, 3)
    assert report["train_rows_also_in_evaluation"] == {"count": 6, "removed": True}
    assert t["examples"] + report["splits"]["validation"]["examples"] == 54
    assert report["splits"]["test"]["class_counts"] == {"maybe": 2, "no": 2, "yes": 2}
    assert 0.5 < t["truncated_fraction"] <= 1.0 and t["tokens_p50"] > 8
    assert not set(read(prepared, "train")["text"]) & set(read(prepared, "test")["text"])


def test_decode_policy_falls_back_per_line_and_counts_it(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    src.mkdir()
    lines = ["text\tlabel"] + [f"row {i} fine\t{i % 2}" for i in range(30)]
    raw = "\n".join(lines).encode() + "\nprice \xa3 5\t1\n".encode("cp1252")
    (src / "train.tsv").write_bytes(raw)
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, {"source": "files", "dir": str(src), "splits": {"train": "train.tsv"}}))
    assert rc == 0
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["splits"]["train"]["decoded_as_cp1252"] == 1
    texts = pd.concat([read(prepared, s) for s in ("train", "validation", "test")])["text"]
    assert "price £ 5" in set(texts)


def test_sentence_pairs_run_through_every_stage(tmp_path, tiny_model_dir):
    src = glue_slice(tmp_path, "rte", 60)
    doc = params_with(
        tiny_model_dir, load_profile("rte")["data"] | {"dir": str(src), "max_length": 48, "val_fraction": 0.2},
        methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}}, student_seeds=[1],
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    run_pipeline(tmp_path, params)
    manifest = json.loads((tmp_path / "signals/manifest.json").read_text())
    assert manifest["num_examples"] == len(read(tmp_path / "prepared", "train"))
    metrics = json.loads((tmp_path / "metrics/small-kd_at-s1.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    report = (tmp_path / "report.md").read_text()
    assert "## Data" in report and "sentence pairs" in report and "entailment" in report
    assert "cannot judge significance" in report  # one seed


HUB = {"source": "hub", "hub_name": "glue", "hub_config": "sst2", "splits": {"train": "train"}, "text_column": "sentence"}


def test_datasets_source_keeps_class_names_and_drops_hidden_test_labels(tmp_path, tiny_model_dir, capsys):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    local = tmp_path / "local_glue"
    local.mkdir()
    rows = {"sentence": [f"sentence {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(local / "train.parquet"))
    hidden = {"sentence": [f"test {i}" for i in range(10)], "label": [-1] * 10}  # GLUE's unlabelled test split
    datasets.Dataset.from_dict(hidden, features=features).to_parquet(str(local / "test.parquet"))
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, HUB | {"hub_name": str(local), "hub_config": "", "splits": {"train": "train", "test": "test"}}))
    assert rc == 2 and "split 'test': no usable rows after cleaning" in capsys.readouterr().err  # all labels hidden
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, HUB | {"hub_name": str(local), "hub_config": "", "splits": {"train": "train"}}))
    assert rc == 0
    assert json.loads((prepared / "meta.json").read_text())["label_names"] == ["neg", "pos"]
    assert sum(len(read(prepared, s)) for s in ("train", "validation", "test")) == 40


def test_hub_source_unreachable_says_how_to_use_local_files(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: an offline machine, on any machine
    rc, prepared = prepare(tmp_path, params_with(tiny_model_dir, HUB))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not prepared.exists()
    assert err.startswith("error: data.hub_name 'glue': the Hugging Face hub cannot be reached (127.0.0.1:9: ")
    assert "data.source: files" in err and "\n" not in err


def test_hub_source_in_offline_mode_without_a_cache_is_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, read at import
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    rc, _ = prepare(tmp_path, params_with(tiny_model_dir, HUB))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: data.hub_name 'glue': cannot load it from the Hugging Face hub") and "\n" not in err
