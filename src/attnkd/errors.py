"""User-facing errors and the one place that turns them into a clean exit.

A stage that meets bad input raises `UserError` with one line naming the culprit (a file, a
row, a params key). `run_stage` prints that line and exits non-zero; the full traceback is shown
only when ATTNKD_DEBUG=1, because users need the culprit, not our call stack.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input the user can fix: the message names the file, row, column or params key."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage entry point; turn a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        if os.environ.get("ATTNKD_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
