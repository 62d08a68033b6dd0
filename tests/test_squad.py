"""SQuAD v1.1: the official scores on hand-worked cases, reading the real files and refusing bad
ones, windows over real paragraphs (answers across window edges), and merging windows back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from attnkd.errors import UserError
from attnkd.models import resolve_init
from attnkd.losses import kd_loss
from attnkd.tasks.squad.reading import best_answer, exact_match, f1, normalize_answer, read_squad, span_rows, split_by_article, windows
from conftest import shared_data

SQUAD = shared_data("squad_v1.1/dev-v1.1.json.zip") / "squad_v1.1"


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The Denver  Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("another theme") == "another theme"  # articles only as whole words
    assert normalize_answer("U.S.") == "us"


def test_exact_match_and_f1_on_hand_worked_cases():
    golds = ["Denver Broncos", "The Broncos"]
    assert exact_match("the broncos.", golds) == 1.0 and f1("the broncos.", golds) == 1.0
    # "denver broncos team" vs "denver broncos": precision 2/3, recall 1 -> 0.8; vs "broncos": 1/3, 1 -> 0.5
    assert exact_match("Denver Broncos team", golds) == 0.0
    assert f1("Denver Broncos team", golds) == pytest.approx(0.8)
    assert f1("broncos broncos", ["Denver Broncos"]) == pytest.approx(2 * 0.5 * 0.5 / 1.0)  # one shared token counted once
    assert exact_match("", golds) == 0.0 and f1("", golds) == 0.0
    assert f1("Carolina", golds) == 0.0


@pytest.fixture(scope="module")
def dev() -> list:
    return read_squad(SQUAD / "dev-v1.1.json.zip", require_answers=True)


def test_the_real_files_read_question_by_question(dev):
    assert len(dev) == 10570 and len({q.title for q in dev}) == 48
    assert all(1 <= len(q.answers) for q in dev)
    train = read_squad(SQUAD / "train-v1.1-prefix.json.zip")
    assert len(train) == 4370 and all(len(q.answers) == 1 for q in train)
    assert all(q.context[a["answer_start"] :].startswith(a["text"]) for q in train[:500] for a in q.answers)


def _write(tmp: Path, doc) -> Path:
    path = tmp / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc(**qa_changes) -> dict:
    qa = {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}]} | qa_changes
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Denver won the game.", "qas": [qa]}]}]}


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"bad.json: not SQuAD JSON"),
    ({"version": "1.1"}, r"bad.json: not SQuAD JSON \(no top-level 'data' list\)"),
    ({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}, r"bad.json: article 'T', paragraph 0: missing 'context'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "x"}]}]}, r"bad.json: article 'T', paragraph 0: missing 'qas'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "  ", "qas": []}]}]}, r"bad.json: article 'T', paragraph 0: empty context"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "Denver won.", "qas": [{"id": "q7", "question": "?"}]}]}]},
     r"bad.json: question q7: missing 'answers'"),
    (_doc(answers=[{"text": "Denver", "answer_start": 3}]), r"bad.json: question q1: answer_start 3 does not point at 'Denver'"),
    (_doc(answers=[]), r"bad.json: question q1: no answers \(a training split needs one\)"),
])
def test_bad_squad_input_is_one_error_naming_file_and_question(tmp_path, doc, message):
    with pytest.raises(UserError, match=message):
        read_squad(_write(tmp_path, doc), require_answers=True)


def test_an_evaluation_split_may_have_unanswered_questions(tmp_path):
    assert read_squad(_write(tmp_path, _doc(answers=[])), require_answers=False)[0].answers == []


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2")))


def test_windows_map_answers_to_tokens_and_point_at_cls_when_cut(dev, tokenizer):
    """Real paragraphs cut into 64-token windows with a 16-token stride: where a window holds the whole
    answer, its first and last tokens are those holding the answer's first and last characters (an
    answer inside a word maps to the whole token); where it holds part or none, it
    points at [CLS]; every answer lies whole in at least one window; the windows cover the context."""
    rows = [q for q in dev if len(q.context) > 600][:40]
    ws = windows(tokenizer, rows, max_length=64, stride=16)
    straddled = 0
    for q, row in enumerate(rows):
        mine = [w for w in ws if w.question == q]
        assert len(mine) > 1 and all(len(w.input_ids) <= 64 for w in mine)
        a0 = row.answers[0]["answer_start"]
        a1 = a0 + len(row.answers[0]["text"])
        for w in mine:
            spans = [o for o in w.offsets if o is not None]
            whole = spans[0][0] <= a0 and a1 <= spans[-1][1]
            partial = not whole and spans[0][0] < a1 and a0 < spans[-1][1]
            straddled += partial
            if whole:
                assert 0 < w.start <= w.end and w.offsets[w.start][0] <= a0 < w.offsets[w.start][1]
                assert w.offsets[w.end][0] < a1 <= w.offsets[w.end][1]
                assert row.answers[0]["text"] in row.context[w.offsets[w.start][0] : w.offsets[w.end][1]]  # whole tokens: "gold" in "golden"
            else:
                assert (w.start, w.end) == (0, 0)
        assert any(w.start > 0 for w in mine)
        covered = sorted({o for w in mine for o in w.offsets if o is not None})
        assert covered[0][0] == 0 and covered[-1][1] == len(row.context.rstrip())
    assert straddled > 0  # some answers do cross a window edge here


def test_best_answer_merges_windows_within_the_context_and_the_length_limit(dev, tokenizer):
    row = next(q for q in dev if len(q.context) > 600)
    ws = windows(tokenizer, [row], max_length=64, stride=16)
    gold = next(w for w in ws if w.start > 0)
    spans = []
    for w in ws:
        start, end = np.zeros(len(w.input_ids)), np.zeros(len(w.input_ids))
        start[0] = end[0] = 50.0  # [CLS] and the question are never an answer
        if w is gold:
            start[w.start], end[w.end] = 5.0, 5.0
        spans.append((start, end, w.offsets))
    assert normalize_answer(best_answer(row.context, spans, max_answer_tokens=30)) == normalize_answer(row.answers[0]["text"])
    start, end, offsets = spans[ws.index(gold)]
    end[gold.end] = 0.0
    far = min(gold.start + 10, max(i for i, o in enumerate(offsets) if o is not None))
    end[far] = 6.0  # a higher-scoring end beyond the length limit is not taken
    assert offsets[far] is not None
    assert best_answer(row.context, spans, max_answer_tokens=5) != row.context[offsets[gold.start][0] : offsets[far][1]]
    assert best_answer(row.context, spans, max_answer_tokens=30) == row.context[offsets[gold.start][0] : offsets[far][1]]


def test_article_splits_are_disjoint_sized_and_fixed_by_the_seed(dev):
    train = read_squad(SQUAD / "train-v1.1-prefix.json.zip")
    splits = split_by_article(dev, train, test_questions=2500, validation_questions=800, seed=42)
    titles = {k: {q.title for q in v} for k, v in splits.items()}
    assert not (titles["test"] & titles["validation"]) and not (titles["train"] & (titles["test"] | titles["validation"]))
    assert len(splits["test"]) >= 2500 and len(splits["validation"]) >= 800
    assert sum(map(len, splits.values())) == len(dev) + len(train) and set(q.id for q in train) <= {q.id for q in splits["train"]}
    again = split_by_article(dev, train, 2500, 800, seed=42)
    assert [q.id for q in again["test"]] == [q.id for q in splits["test"]]
    assert {q.title for q in split_by_article(dev, train, 2500, 800, seed=7)["test"]} != titles["test"]
    with pytest.raises(UserError, match="20000 test and 800 validation questions asked, the dev file has 10570"):
        split_by_article(dev, train, 20000, 800, seed=42)


def test_span_rows_mask_question_and_padding_and_keep_cls():
    # [CLS] q q [SEP] c c c [SEP] pad pad
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    start, end = torch.arange(10.0)[None], -torch.arange(10.0)[None]
    rows = span_rows(start, end, types, mask)
    assert rows.shape == (2, 10)
    kept = [0, 4, 5, 6]
    assert torch.equal(rows[0, kept], start[0, kept]) and torch.equal(rows[1, kept], end[0, kept])
    assert (rows[:, [1, 2, 3, 7, 8, 9]] == -1e4).all()


def test_span_kd_is_hinton_kd_over_the_context_and_cls_with_t_squared():
    """Start rows differ (teacher [2, 0] on the two allowed positions, student uniform), end rows agree:
    L = T^2 * (KL(softmax([2, 0] / T) || uniform) + 0) / 2 rows. Whatever the masked positions hold,
    the value stays."""
    types = torch.tensor([[0, 0, 0, 1, 1]])  # [CLS] q [SEP] c [SEP]
    mask = torch.ones(1, 5, dtype=torch.long)
    t_start, t_end = torch.tensor([[2.0, 9.0, 9.0, 0.0, 9.0]]), torch.tensor([[1.0, -5.0, 3.0, 1.0, 7.0]])
    s_start, s_end = torch.tensor([[0.0, -3.0, 4.0, 0.0, 1.0]]), torch.tensor([[1.0, 2.0, 0.0, 1.0, -2.0]])
    temperature = 2.0
    p = torch.softmax(torch.tensor([2.0, 0.0]) / temperature, 0)
    expected = temperature**2 * float((p * torch.log(p / 0.5)).sum()) / 2
    loss = kd_loss(span_rows(s_start, s_end, types, mask), span_rows(t_start, t_end, types, mask), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_the_task_merges_each_questions_windows_from_the_prepared_parquet(dev, tokenizer, tmp_path):
    """Windows written as prepare writes them and read back as a Split: the answer of a question
    comes from whichever of its windows scores best, even a later one, and EM/F1 are the official
    scores of that text."""
    from attnkd import data
    from attnkd.io import sha256_file
    from attnkd.tasks.squad import FILL, Squad, window_frame

    rows = [q for q in dev if len(q.context) > 600][:3]
    ws = windows(tokenizer, rows, max_length=64, stride=16)
    path = tmp_path / "test.parquet"
    window_frame(rows, ws).to_parquet(path, index=False)
    (tmp_path / "meta.json").write_text(json.dumps({"label_names": [], "max_length": 64, "source": "t", "pair": True, "tokenizer": "t", "splits": {
        "test": {"examples": len(ws), "inputs_sha256": "x", "sha256": sha256_file(path)}}}))
    split = data.load_split(tmp_path, "test")
    assert list(split.extra["question_id"]) == [rows[w.question].id for w in ws]
    width = int(split.lengths.max())
    scores = np.full((len(ws), 2, width), FILL)
    for i, w in enumerate(ws):
        context = [t for t, o in enumerate(w.offsets) if o is not None]
        scores[i, :, context] = 0.0
        scores[i, :, context[0]] = 1.0  # every window's own best guess: its first context token
        if w.start > 0 and not any(v.question == w.question and v.start > 0 for v in ws[:i]):  # the first window holding the answer...
            if i > 0 and ws[i - 1].question == w.question:  # ...when it is not the question's first window
                scores[i, 0, w.start] = scores[i, 1, w.end] = 9.0
    frame = Squad().answers(split, scores.reshape(len(ws), -1))
    assert list(frame["id"]) == [q.id for q in rows]
    later = [q for q, row in enumerate(rows) if ws[[w.question for w in ws].index(q)].start == 0]  # answer not in the first window
    assert later, "the paragraphs chosen must have answers past their first window"
    for q in later:
        assert normalize_answer(frame["predicted"][q]) == normalize_answer(rows[q].answers[0]["text"]) and frame["exact_match"][q] == 1.0
    assert frame["f1"].tolist() == [pytest.approx(f1(p, [a["text"] for a in r.answers])) for p, r in zip(frame["predicted"], rows)]
    assert Squad().metrics(split, scores.reshape(len(ws), -1)) == {"exact_match": frame["exact_match"].mean(), "f1": frame["f1"].mean()}


# ---- the squad task's prepare stage: sources and bad input, nothing written ------------------

def _squad_params(tmp: Path, model_dir: Path, data: dict) -> Path:
    import yaml

    from conftest import tiny_params

    doc = tiny_params(model_dir)
    doc["task"] = "squad"
    doc["data"] |= {"source": "files", "dir": str(tmp), "splits": {"train": "train.json", "validation": "", "test": "dev.json"},
                    "max_length": 64, "doc_stride": 16, "test_questions": 1, "validation_questions": 1} | data
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _prepare(params: Path, capsys) -> tuple[int, str, Path]:
    from conftest import run_script

    out = params.parent / "prepared"
    rc = run_script("prepare", "--params", params, "--out", out, "--report", params.parent / "data.json")
    return rc, capsys.readouterr().err.strip(), out


def _three_articles(unanswered: str = "") -> dict:
    """Three one-paragraph articles; `unanswered` names the article whose question has no answers."""
    return {"data": [{"title": t, "paragraphs": [{"context": f"{t} won the game in {t.lower()}ville.", "qas": [
        {"id": f"q-{t}", "question": f"Who won in {t}?", "answers": [] if t == unanswered else [{"text": t, "answer_start": 0}]}]}]}
        for t in ("Alpha", "Beta", "Gamma")]}


def test_prepare_refuses_bad_squad_files_in_one_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "dev.json").write_text(json.dumps(_three_articles()))
    (tmp_path / "train.json").write_text(json.dumps(_doc(answers=[{"text": "Denver", "answer_start": 3}])))
    rc, err, out = _prepare(_squad_params(tmp_path, tiny_model_dir, {}), capsys)
    assert rc == 2 and "\n" not in err and not out.exists()
    assert err == f"error: {tmp_path / 'train.json'}: question q1: answer_start 3 does not point at 'Denver' (the context there reads 'ver wo')"
    # an unanswered dev question is fine in test or validation, refused when its article lands in train
    (tmp_path / "train.json").write_text(json.dumps(_doc()))
    seen = set()
    for t in ("Alpha", "Beta", "Gamma"):
        (tmp_path / "dev.json").write_text(json.dumps(_three_articles(unanswered=t)))
        rc, err, out = _prepare(_squad_params(tmp_path, tiny_model_dir, {}), capsys)
        assert "\n" not in err
        seen.add(rc)
        if rc == 2:
            assert err == f"error: {tmp_path}/dev.json: question q-{t}: no answers, and its article is in the training split (a training split needs one)"
            assert not out.exists()
        else:
            shutil.rmtree(out)
    assert seen == {0, 2}  # one of the three articles is drawn into train, the others into test and validation
    rc, err, out = _prepare(_squad_params(tmp_path, tiny_model_dir, {"doc_stride": 32}), capsys)
    assert rc == 2 and err == "error: params.yaml: data.doc_stride: 32 must be below half of data.max_length (64), or windows barely advance"


def test_the_hub_squad_is_read_through_datasets_and_is_one_line_offline(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import datasets

    local = tmp_path / "local_squad"
    local.mkdir()
    for split, doc in (("train", _doc()), ("validation", _three_articles(unanswered="Beta"))):
        rows = [{"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
                 "answers": {"text": [x["text"] for x in qa["answers"]], "answer_start": [x["answer_start"] for x in qa["answers"]]}}
                for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]
        datasets.Dataset.from_list(rows).to_parquet(str(local / f"{split}.parquet"))
    hub = {"source": "hub", "hub_name": str(local), "hub_config": "", "splits": {"train": "train", "validation": "", "test": "validation"}}
    rc, err, out = _prepare(_squad_params(tmp_path, tiny_model_dir, hub), capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["splits"]["test"]["questions"] == 1 and report["splits"]["train"]["questions"] == 2  # 1 train question + 1 dev article
    shutil.rmtree(out)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: an offline machine
    rc, err, out = _prepare(_squad_params(tmp_path, tiny_model_dir, hub | {"hub_name": "squad"}), capsys)
    assert rc == 2 and "\n" not in err and not out.exists()
    assert err.startswith("error: data.hub_name 'squad': the Hugging Face hub cannot be reached (127.0.0.1:9: ")
