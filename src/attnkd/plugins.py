"""Which tasks and student families exist: their names, where each lives, and the few facts the
params need to validate a run before any task or model code is imported.

Pure data. The config layer (`attnkd.params`) reads it to check `task:` and `students.*.family`;
`attnkd.tasks.get_task` and `attnkd.students.get_family` import the named object on first use.
Adding a task is its package under `attnkd/tasks/` and one line in `TASKS`; adding a student
family is its module under `attnkd/students/` and one line in `FAMILIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    path: str  # "module:object", the task object
    transfer_set: bool = False  # takes few labels and a transfer set (data.labelled_fraction, data.unlabelled, augment.copies)
    sources: tuple[str, ...] = ("bbc_news", "files", "hub")  # the data.source values it reads
    requires: tuple[str, ...] = ()  # data keys it needs set (non-empty)
    teacher_from: str = "init"  # the teacher params key that builds its teacher: init (a pretrained encoder) or seq2seq (from scratch)


TASKS: dict[str, TaskInfo] = {
    "classification": TaskInfo("attnkd.tasks.classification:TASK", transfer_set=True),
    "squad": TaskInfo("attnkd.tasks.squad:TASK"),
    "ner": TaskInfo("attnkd.tasks.ner:TASK", sources=("files", "hub")),
    "translation": TaskInfo("attnkd.tasks.translation:TASK", sources=("files", "hub"), requires=("source_lang", "target_lang"), teacher_from="seq2seq"),
}

FAMILIES: dict[str, str] = {
    "transformer": "attnkd.students.transformer:FAMILY",
    "lstm": "attnkd.students.lstm:FAMILY",
}
# a saved model's config model_type -> the family (as it serves a task) whose own architecture it is
OWN_MODEL_TYPES: dict[str, str] = {"attnkd-bilstm": "attnkd.students.lstm:FAMILY", "attnkd-bilstm-tagger": "attnkd.students.lstm:TAGGER"}


def load(path: str):
    """The object a "module:object" path names (imported on first use)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
