"""Tasks: everything that depends on what a model predicts, one package per task.

The interface is `attnkd.tasks.base` (a small `Task` core, and `TaskBase`/`EncoderTask` with the
optional capabilities' defaults); the built-in tasks are listed by name in `attnkd.plugins.TASKS`
and imported on first use, so importing this package imports no task.
"""

from __future__ import annotations

from attnkd.errors import UserError
from attnkd.plugins import TASKS as BUILTIN, TaskInfo, load
from attnkd.tasks.base import EncoderTask, Task, TaskBase, View, hard_label_loss, predict_rows, raw_outputs

TASKS: dict[str, Task] = {}  # the tasks loaded or registered so far, by name


def register(task: Task, info: TaskInfo | None = None) -> Task:
    """Add a task defined outside the package (a test's, a user's plug-in) under its name; `info`:
    what params validation needs to know of it (default: a task of encoder inputs, no transfer set)."""
    TASKS[task.name] = task
    BUILTIN.setdefault(task.name, info or TaskInfo(path=""))
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        if name not in BUILTIN:
            raise UserError(f"params.yaml: task: {name!r} is not a task (have {', '.join(sorted({*BUILTIN, *TASKS}))})")
        TASKS[name] = load(BUILTIN[name].path)
    return TASKS[name]


__all__ = ["TASKS", "EncoderTask", "Task", "TaskBase", "View", "get_task", "hard_label_loss", "predict_rows", "raw_outputs", "register"]
