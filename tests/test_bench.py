"""The benchmarks' FLOP formulas, checked against PyTorch's own count of a real BERT layer."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from bench_flops import train_flops
from bench_signals import layer_flops


def counted(layers: int, hidden: int, intermediate: int, lengths: list[int], backward: bool) -> int:
    """FLOPs PyTorch counts for `layers` real BERT layers run on one unpadded example per length."""
    config = BertConfig(hidden_size=hidden, num_attention_heads=2, intermediate_size=intermediate, attn_implementation="eager")
    stack = torch.nn.Sequential(*(BertLayer(config) for _ in range(layers)))
    total = 0
    for n in lengths:
        x = torch.randn(1, n, hidden, requires_grad=backward)
        with FlopCounterMode(display=False) as fc:
            h = x
            for layer in stack:
                h = layer(h)
                h = h[0] if isinstance(h, tuple) else h
            if backward:
                h.sum().backward()
        total += fc.get_total_flops()
    return total


@pytest.mark.parametrize("layers, hidden, intermediate, lengths", [(1, 4, 8, [3]), (2, 8, 24, [3, 5, 11])])
def test_layer_flops_is_what_pytorch_counts_for_a_forward(layers, hidden, intermediate, lengths):
    assert layer_flops(layers, hidden, intermediate, np.array(lengths)) == counted(layers, hidden, intermediate, lengths, backward=False)


def test_train_flops_is_what_pytorch_counts_for_forward_and_backward():
    assert train_flops(np.array([3, 7]), 2, 8, 24) == counted(2, 8, 24, [3, 7], backward=True)
