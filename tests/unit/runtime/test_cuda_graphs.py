"""CUDA graph bucketing and padding on the CPU: which bucket a batch replays, how it is padded,
and that the padded batch's attention metadata has the same tensor shapes whatever its lengths
(what refreshing a captured graph's metadata in place relies on)."""

from __future__ import annotations

import pytest
import torch

from sas_runtime.attention.dense import DenseBackend
from sas_runtime.config import CudaGraphsConfig, PatternConfig, PatternType
from sas_runtime.cuda_graphs import GraphBuckets, metadata_tensors, pad_batch, sequence_buckets
from sas_runtime.model import padded_attention_metadata


def test_sequence_buckets_are_powers_of_two_capped_at_the_model_length() -> None:
    assert sequence_buckets(256) == (8, 16, 32, 64, 128, 256)
    assert sequence_buckets(200) == (8, 16, 32, 64, 128, 200)
    assert sequence_buckets(8) == (8,)
    assert sequence_buckets(5) == (5,)


def test_a_batch_replays_the_smallest_bucket_that_holds_it() -> None:
    buckets = GraphBuckets.of(CudaGraphsConfig().batch_sizes, 256)
    assert buckets.find(1, 3) == (1, 8)
    assert buckets.find(3, 9) == (4, 16)
    assert buckets.find(64, 256) == (64, 256)
    assert buckets.find(17, 220) == (32, 256)
    assert buckets.find(65, 10) is None  # larger than every batch bucket: eager
    assert buckets.find(2, 257) is None
    assert buckets.find(0, 8) is None


def test_buckets_are_captured_largest_first() -> None:
    buckets = GraphBuckets.of([4, 1, 2], 16)
    assert buckets.batch_sizes == (1, 2, 4)
    assert buckets.all() == [(4, 16), (4, 8), (2, 16), (2, 8), (1, 16), (1, 8)]


def test_pad_batch_pads_texts_and_adds_padding_rows_of_length_one() -> None:
    ids, lengths = pad_batch([(101, 7, 102), (101, 102)], (4, 8), pad_token_id=0)
    assert ids.dtype == lengths.dtype == torch.int64
    assert ids.tolist() == [
        [101, 7, 102, 0, 0, 0, 0, 0],
        [101, 102, 0, 0, 0, 0, 0, 0],
        [0] * 8,
        [0] * 8,
    ]
    assert lengths.tolist() == [3, 2, 1, 1]
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch([(1,) * 9], (4, 8), pad_token_id=0)
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch([(1,)] * 5, (4, 8), pad_token_id=0)


@pytest.mark.parametrize(
    "pattern",
    [
        PatternConfig(),
        PatternConfig(type=PatternType.CAUSAL, block_size=64),
        PatternConfig(type=PatternType.WINDOW, window=16, block_size=64),
        PatternConfig(type=PatternType.DOCUMENT, block_size=64),
    ],
    ids=lambda p: p.type.value,
)
def test_padded_metadata_shapes_depend_only_on_the_bucket(pattern: PatternConfig) -> None:
    backend = DenseBackend()
    full = padded_attention_metadata(backend, pattern, torch.tensor([128, 128]), 128)
    ragged = padded_attention_metadata(backend, pattern, torch.tensor([5, 1]), 128)
    shapes = [(t.shape, t.dtype) for t in metadata_tensors(full)]
    assert shapes == [(t.shape, t.dtype) for t in metadata_tensors(ragged)]
    assert full.dense_mask is not None  # the padding is masked even when nothing is padded
    mask = ragged.dense_mask
    assert mask is not None
    assert not bool(mask[1, 0, 0, 1:].any())
    assert bool(mask[1, 0, 0, 0])
