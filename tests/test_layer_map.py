import pytest

from attnkd.errors import UserError
from attnkd.losses import resolve_layer_map


def test_uniform_integer_ratio_is_tinybert_k_times_m():
    assert resolve_layer_map("uniform", 6, 3) == [(2, 1), (4, 2), (6, 3)]
    assert resolve_layer_map("uniform", 6, 2) == [(3, 1), (6, 2)]


def test_uniform_non_integer_ratio_floors_and_keeps_last_pair():
    assert resolve_layer_map("uniform", 6, 4) == [(1, 1), (3, 2), (4, 3), (6, 4)]
    assert resolve_layer_map("uniform", 12, 5)[-1] == (12, 5)


def test_last_pairs_last_layers():
    assert resolve_layer_map("last", 6, 3) == [(6, 3)]


def test_explicit_pairs_are_validated():
    assert resolve_layer_map([[5, 1], [6, 2]], 6, 2) == [(5, 1), (6, 2)]
    with pytest.raises(UserError, match=r"pair \[7, 1\] is out of range"):
        resolve_layer_map([[7, 1]], 6, 2)
    with pytest.raises(UserError, match="out of range"):
        resolve_layer_map([[6, 3]], 6, 2)
    with pytest.raises(UserError, match="appears twice"):
        resolve_layer_map([[5, 1], [6, 1]], 6, 2)


def test_uniform_refuses_a_student_deeper_than_the_teacher():
    with pytest.raises(UserError, match="no deeper"):
        resolve_layer_map("uniform", 2, 3)
