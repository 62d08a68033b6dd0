import numpy as np
import pytest

from bench_flops import train_flops
from bench_signals import layer_flops


def test_layer_flops_counts_projections_feed_forward_and_attention():
    # one 3-token example, one layer of width 4, feed-forward 8:
    # 3 tokens x 2 x (4 x 16 + 2 x 4 x 8) = 768 dense, 4 x 4 x 3^2 = 144 attention
    assert layer_flops(1, 4, 8, np.array([3])) == 768 + 144
    assert layer_flops(6, 4, 8, np.array([3, 5])) == 6 * layer_flops(1, 4, 8, np.array([3, 5]))


def test_training_is_three_forwards():
    lengths = np.array([7, 12, 30])
    assert train_flops(lengths, 2, 384, 1536) == 3 * layer_flops(2, 384, 1536, lengths)


@pytest.mark.parametrize("student_layers, ceiling", [(2, 2.0), (3, 5 / 3), (1, 3.0)])
def test_store_ceiling_of_a_same_width_student(student_layers, ceiling):
    """(student training + teacher forward) / student training, for the 6x384 teacher: a 2-layer
    student's training costs exactly one teacher forward, so reading the store can at most halve it."""
    lengths = np.array([9, 14, 64])
    student = 3 * layer_flops(student_layers, 384, 1536, lengths)
    teacher = layer_flops(6, 384, 1536, lengths)
    assert (student + teacher) / student == pytest.approx(ceiling)
