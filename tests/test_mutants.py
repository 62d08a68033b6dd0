"""The mutation check (tools/mutants.py) stays runnable: every mutant still finds its text."""

import pytest

from mutants import MUTANTS, REPO


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_changes_exactly_one_place(mutant):
    assert (REPO / mutant.file).read_text().count(mutant.old) == 1
    assert all((REPO / t.split("::")[0]).is_file() for t in mutant.tests)  # a file, or a file::test
