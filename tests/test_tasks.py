"""The task interface carries a second output shape: span extraction (a start and an end token per
example, BertForQuestionAnswering), defined here in the tests only, through the real teacher,
plan, extract, distill and evaluate entry scripts. Nothing in the stages, the store or the
training loop knows which task it runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertForQuestionAnswering

from attnkd import data
from attnkd.io import atomic_write_json, sha256_file
from attnkd.models import load_model, resolve_init
from attnkd.signals import SignalStore, online_batch
from attnkd.tasks import TASKS, EncoderTask, View, get_task, predict_rows, register
from conftest import run_script, tiny_config, tiny_params


class ToySpan(EncoderTask):
    """Span extraction in miniature: each example's target is the [start, end] token of its span."""

    name = "toy_span"
    select_by = "exact"
    summary_metrics = ("exact",)
    outputs = {"start_logits": "token", "end_logits": "token"}

    def model_class(self) -> type:
        return BertForQuestionAnswering

    def head_config(self, meta: dict) -> dict:
        return {}

    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View:
        """A start row and an end row per example, (2B, T), padding masked out of both."""
        rows = torch.stack([raw["start_logits"], raw["end_logits"]], 1)  # (B, 2, T)
        rows = rows.masked_fill(~batch["attention_mask"].bool()[:, None, :], -1e4)
        return {"logits": rows.flatten(0, 1)}

    def targets(self, batch: dict) -> View:
        return {"labels": batch["labels"].flatten()}  # (B, 2) -> (2B,)

    def predict(self, model, split, batch_size, pad_id, compute=None):
        def best(out, b):
            view = self.view({"start_logits": out.start_logits, "end_logits": out.end_logits}, b)["logits"]
            return view.argmax(-1).view(-1, 2)  # (B, 2)

        return predict_rows(model, split, batch_size, pad_id, 2, best, *(c for c in (compute,) if c))

    def metrics(self, split, predictions) -> dict[str, float]:
        return {"exact": float((predictions.astype(np.int64) == split.labels).all(1).mean())}

    def caption(self, split, i, meta) -> str:
        return f"span {split.labels[i].tolist()}"

    def evaluation(self, split, predictions, meta, bins):
        frame = pd.DataFrame({"start": split.labels[:, 0], "end": split.labels[:, 1],
                              "predicted_start": predictions[:, 0].astype(int), "predicted_end": predictions[:, 1].astype(int)})
        return self.metrics(split, predictions), frame.to_csv(index=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A span teacher (tiny BertForQuestionAnswering from a config) and prepared splits of token
    sequences whose span is the two tokens after the first, in the prepared-data format."""
    task = register(ToySpan())
    root = tmp_path_factory.mktemp("toy-span")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2")))
    BertForQuestionAnswering(tiny_config(num_labels=2)).save_pretrained(root / "init")
    tokenizer.save_pretrained(root / "init")
    rng = np.random.default_rng(0)
    meta = {"label_names": [], "max_length": 16, "source": "toy", "pair": False, "tokenizer": "toy", "splits": {}}
    for name, n in (("train", 24), ("validation", 8), ("test", 8)):
        ids = [[101, *rng.integers(2000, 5000, size=int(k)).tolist(), 102] for k in rng.integers(4, 12, size=n)]
        enc = data.Encoded(ids, [[0] * len(x) for x in ids], np.array([len(x) for x in ids]))
        path = root / "prepared" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        data.write_split(path, ["t"] * n, [""] * n, [[2, 3]] * n, enc)
        meta["splits"][name] = {"examples": n, "inputs_sha256": data.ids_digest(ids), "sha256": sha256_file(path)}
    atomic_write_json(root / "prepared/meta.json", meta)
    doc = tiny_params(root / "init", methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}}, student_seeds=[1])
    doc["task"] = "toy_span"
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    yield root, task
    TASKS.pop(task.name)


def test_a_span_task_runs_through_teacher_extract_distill_and_evaluate(toy):
    root, task = toy
    p, prepared, teacher = ["--params", root / "params.yaml"], root / "prepared", root / "teacher"
    assert run_script("teacher", *p, "--prepared", prepared, "--out", teacher, "--metrics", root / "t.json", "--curve", root / "t.tsv") == 0
    assert json.loads((root / "t.json").read_text()).keys() == {"best_epoch", "val_exact"}  # the task's selection metric
    assert run_script("plan", *p, "--teacher", teacher, "--out", root / "plan.json") == 0
    assert run_script("extract", *p, "--prepared", prepared, "--teacher", teacher, "--plan", root / "plan.json", "--out", root / "signals") == 0
    for method in ("ce", "kd_at"):
        assert run_script("distill", *p, "--student", "small", "--method", method, "--seed", 1, "--prepared", prepared, "--teacher", teacher,
                          "--signal-store", root / "signals", "--out", root / f"students/small-{method}-s1",
                          "--metrics", root / f"{method}.json", "--curve", root / f"{method}.tsv") == 0
    assert run_script("evaluate", *p, "--prepared", prepared, "--teacher", teacher, "--students", root / "students",
                      "--metrics-dir", root / "metrics", "--predictions-dir", root / "predictions", "--attention", root / "attention.json") == 0

    student = load_model(root / "students/small-kd_at-s1", task)
    assert isinstance(student, BertForQuestionAnswering) and student.config.num_hidden_layers == 1
    curve = pd.read_csv(root / "kd_at.tsv", sep="\t")
    assert {"train_ce", "train_kd", "train_attn_kl", "val_exact"} <= set(curve.columns) and (curve["train_kd"] > 0).all()
    metrics = json.loads((root / "metrics/small-kd_at-s1.json").read_text())
    assert 0.0 <= metrics["exact"] <= 1.0 and set(metrics["attention_js"]) == {"t2-s1"} and metrics["latency_ms"] > 0
    assert list(pd.read_csv(root / "predictions/teacher.csv").columns) == ["start", "end", "predicted_start", "predicted_end"]
    assert json.loads((root / "attention.json").read_text())[0]["title"].endswith("tokens") and "span [2, 3]" in json.loads((root / "attention.json").read_text())[0]["title"]


def test_the_store_keeps_per_token_outputs_ragged_and_equal_to_the_teacher_online(toy):
    root, task = toy
    store = SignalStore(root / "signals")
    train = data.load_split(root / "prepared", "train")
    assert train.labels.shape == (24, 2)
    assert set(store.outputs) == {"start_logits", "end_logits"}
    assert store.outputs["start_logits"].shape == (int(train.lengths.sum()),)  # one value per real token, no padding
    teacher = load_model(root / "teacher", get_task("toy_span")).eval()
    idx = np.array([3, 0, 7])
    b = data.collate(train, idx, 0)
    stored, _ = store.batch(idx, b["input_ids"].shape[1])
    online, _ = online_batch(teacher, b, {}, task)
    mask = b["attention_mask"].bool()
    for name in ("start_logits", "end_logits"):
        assert torch.equal(stored[name][mask], online[name][mask])  # float32, exact
        assert (stored[name][~mask] == 0).all()


class ToyTokens(EncoderTask):
    """Token classification in miniature: a class distribution per token ((T, C) per example)."""

    name = "toy_tokens"
    select_by = "token_accuracy"
    summary_metrics = ("token_accuracy",)
    outputs = {"logits": "token_classes"}

    def model_class(self) -> type:
        from transformers import BertForTokenClassification

        return BertForTokenClassification


def test_the_store_keeps_per_token_class_distributions_ragged_and_equal_to_the_teacher_online(tmp_path):
    """(T, C) per example: stored as (sum n, C) rows, no padding; read back zero-padded to (B, t, C)."""
    from transformers import BertForTokenClassification

    from attnkd.signals import extract

    task = ToyTokens()
    torch.manual_seed(0)
    teacher = BertForTokenClassification(tiny_config(num_labels=7)).eval()
    rng = np.random.default_rng(1)
    ids = [[101, *rng.integers(2000, 5000, size=int(k)).tolist(), 102] for k in rng.integers(2, 14, size=10)]
    split = data.Split(ids, np.zeros(len(ids), dtype=np.int64))
    extract(teacher, split, {"attn": [2]}, "float16", 3, 0, tmp_path, {"inputs_sha256": "x", "teacher_sha256": "y"}, task)
    store = SignalStore(tmp_path)
    assert store.manifest.token_classes == ["logits"]
    assert store.outputs["logits"].shape == (int(split.lengths.sum()), 7)  # one row of C values per real token
    idx = np.array([4, 0, 9, 2])
    b = data.collate(split, idx, 0)
    stored, maps = store.batch(idx, b["input_ids"].shape[1])
    online, online_maps = online_batch(teacher, b, {"attn": [2]}, task)
    mask = b["attention_mask"].bool()
    assert stored["logits"].shape == (4, b["input_ids"].shape[1], 7)
    assert torch.equal(stored["logits"][mask], online["logits"][mask])  # float32, exact, every token of every example in its place
    assert (stored["logits"][~mask] == 0).all()
    pair = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(maps[("attn", 2)])  # (B, H, T, T) real queries x real keys
    torch.testing.assert_close(maps[("attn", 2)][pair], online_maps[("attn", 2)][pair], atol=1e-3, rtol=0)  # fp16 maps beside the fp32 outputs
