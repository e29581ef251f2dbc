from __future__ import annotations

import base64
import struct

import orjson
import pytest
import safetensors.torch
import torch

from sas_runtime.api import TensorPayload
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.tensor_codec import (
    TensorError,
    all_finite,
    check_attention_tensors,
    decode_payload,
    decode_safetensors,
    encode_payload,
    encode_safetensors,
)

DENSE = PatternConfig()
DOCUMENT = PatternConfig(type=PatternType.DOCUMENT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32])
def test_json_payload_round_trips_bit_exactly(dtype: torch.dtype) -> None:
    tensor = (torch.randn(2, 3, 5) * 100).to(dtype)
    payload = encode_payload(tensor)
    assert payload.shape == [2, 3, 5]
    decoded = decode_payload(payload, param="q", max_elements=1000)
    assert decoded.dtype == dtype
    assert torch.equal(decoded, tensor)


def test_json_payload_is_little_endian_row_major() -> None:
    payload = encode_payload(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    assert base64.b64decode(payload.data) == struct.pack("<2f", 1.0, 2.0)


def test_json_payload_with_the_wrong_byte_count_is_refused() -> None:
    payload = TensorPayload(
        dtype="float32", shape=[2, 2], data=base64.b64encode(b"\0" * 12).decode()
    )
    with pytest.raises(TensorError, match="needs 16") as caught:
        decode_payload(payload, param="k", max_elements=100)
    assert caught.value.param == "k"
    assert caught.value.status == 400


def test_json_payload_with_bad_base64_is_refused() -> None:
    payload = TensorPayload(dtype="float32", shape=[1], data="!!!!")
    with pytest.raises(TensorError, match="base64"):
        decode_payload(payload, param="q", max_elements=100)


def test_json_payload_over_the_element_limit_is_413_before_decoding() -> None:
    payload = TensorPayload(dtype="float32", shape=[1 << 20, 1 << 20], data="")
    with pytest.raises(TensorError, match="limit is 4096") as caught:
        decode_payload(payload, param="v", max_elements=4096)
    assert caught.value.status == 413


def test_safetensors_round_trip_keeps_tensors_and_metadata() -> None:
    tensors = {
        "q": torch.randn(1, 2, 3, 4),
        "document_ids": torch.tensor([[0, 0, 1]], dtype=torch.int32),
    }
    body = encode_safetensors(tensors, {"pattern": '{"type": "causal"}'})
    decoded, metadata = decode_safetensors(body, max_elements=100)
    assert metadata == {"pattern": '{"type": "causal"}'}
    assert torch.equal(decoded["q"], tensors["q"])
    assert torch.equal(decoded["document_ids"], tensors["document_ids"])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01",
        struct.pack("<Q", 1000) + b"{}",
        struct.pack("<Q", 2) + b"[]",
        b"not a safetensors file at all",
    ],
)
def test_garbage_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(TensorError) as caught:
        decode_safetensors(body, max_elements=100)
    assert caught.value.status == 400


def _safetensors_with(dtype: str, count: int, width: int) -> bytes:
    """A safetensors file of one tensor `q` of `count` elements of `width` bytes each."""
    header = orjson.dumps(
        {"q": {"dtype": dtype, "shape": [count], "data_offsets": [0, count * width]}}
    )
    return struct.pack("<Q", len(header)) + header + bytes(count * width)


@pytest.mark.parametrize(("dtype", "width"), [("F8_E8M0", 1), ("F64", 8), ("BOOL", 1), ("U8", 1)])
def test_safetensors_dtypes_the_api_does_not_take_are_400(dtype: str, width: int) -> None:
    """Refused from the header, by name: torch cannot even hold some (F8_E8M0, F4), and
    loading them raised a KeyError (a 500)."""
    with pytest.raises(TensorError) as caught:
        decode_safetensors(_safetensors_with(dtype, 8, width), max_elements=100)
    assert caught.value.status == 400
    assert caught.value.param == "q"
    assert dtype in str(caught.value)
    tensors, _ = decode_safetensors(_safetensors_with("BF16", 8, 2), max_elements=100)
    assert tensors["q"].dtype == torch.bfloat16


def test_safetensors_over_the_element_limit_is_413() -> None:
    body = safetensors.torch.save({"q": torch.zeros(10, 10)})
    with pytest.raises(TensorError) as caught:
        decode_safetensors(body, max_elements=99)
    assert (caught.value.status, caught.value.param) == (413, "q")


def _qkv(
    q: tuple[int, ...] = (1, 4, 8, 16),
    kv: tuple[int, ...] = (1, 2, 8, 16),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(q).to(dtype), torch.randn(kv).to(dtype), torch.randn(kv).to(dtype)


def test_a_gqa_problem_passes() -> None:
    check_attention_tensors(*_qkv(), None, pattern=DENSE, max_elements=10_000)


@pytest.mark.parametrize(
    ("q_shape", "kv_shape", "param", "match"),
    [
        ((4, 8, 16), (1, 2, 8, 16), "q", "4-d"),
        ((1, 4, 8, 16), (2, 2, 8, 16), "k", "batch and head_dim"),
        ((1, 4, 8, 16), (1, 2, 8, 8), "k", "batch and head_dim"),
        ((1, 3, 8, 16), (1, 2, 8, 16), "k", "multiple"),
    ],
)
def test_inconsistent_shapes_are_refused(
    q_shape: tuple[int, ...], kv_shape: tuple[int, ...], param: str, match: str
) -> None:
    with pytest.raises(TensorError, match=match) as caught:
        check_attention_tensors(*_qkv(q_shape, kv_shape), None, pattern=DENSE, max_elements=10_000)
    assert caught.value.param == param


def test_k_and_v_must_match() -> None:
    q, k, _ = _qkv()
    with pytest.raises(TensorError, match="same shape"):
        check_attention_tensors(
            q, k, torch.randn(1, 2, 9, 16), None, pattern=DENSE, max_elements=10_000
        )


def test_mixed_and_integer_dtypes_are_refused() -> None:
    q, k, v = _qkv()
    with pytest.raises(TensorError, match="one dtype"):
        check_attention_tensors(q, k.half(), v, None, pattern=DENSE, max_elements=10_000)
    with pytest.raises(TensorError, match="float32, float16 or bfloat16"):
        check_attention_tensors(q.int(), k, v, None, pattern=DENSE, max_elements=10_000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused(bad: float) -> None:
    q, k, v = _qkv()
    v[0, 1, 2, 3] = bad
    with pytest.raises(TensorError, match="NaN or infinite") as caught:
        check_attention_tensors(q, k, v, None, pattern=DENSE, max_elements=10_000)
    assert caught.value.param == "v"


def test_element_limit_applies_to_each_tensor() -> None:
    with pytest.raises(TensorError) as caught:
        check_attention_tensors(*_qkv(), None, pattern=DENSE, max_elements=511)
    assert caught.value.status == 413


def test_document_pattern_needs_matching_document_ids() -> None:
    q, k, v = _qkv()
    with pytest.raises(TensorError, match="needs document_ids"):
        check_attention_tensors(q, k, v, None, pattern=DOCUMENT, max_elements=10_000)
    with pytest.raises(TensorError, match=r"\[batch, kv_len\]"):
        check_attention_tensors(
            q, k, v, torch.zeros(1, 7, dtype=torch.int32), pattern=DOCUMENT, max_elements=10_000
        )
    check_attention_tensors(
        q, k, v, torch.zeros(1, 8, dtype=torch.int32), pattern=DOCUMENT, max_elements=10_000
    )
    wide = torch.tensor([[0, 0, 0, 0, 2**32, 2**32, 2**32, 2**32]], dtype=torch.int64)
    with pytest.raises(TensorError, match="within int32"):  # 2**32 would wrap to 0
        check_attention_tensors(q, k, v, wide, pattern=DOCUMENT, max_elements=10_000)
    widest = torch.tensor([[-(2**31)] * 4 + [2**31 - 1] * 4], dtype=torch.int64)
    check_attention_tensors(q, k, v, widest, pattern=DOCUMENT, max_elements=10_000)
    with pytest.raises(TensorError, match="only used by pattern 'document'"):
        check_attention_tensors(
            q, k, v, torch.zeros(1, 8, dtype=torch.int32), pattern=DENSE, max_elements=10_000
        )


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=lambda d: str(d)[6:]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_one_bad_value_in_any_layout(dtype: torch.dtype, bad: float) -> None:
    tensor = torch.randn(2, 3, 64, 16).to(dtype) * 1000
    assert all_finite(tensor)
    assert all_finite(tensor.transpose(1, 2))
    tensor[1, 2, 33, 7] = bad
    assert not all_finite(tensor)
    assert not all_finite(tensor.transpose(1, 2))
    # a buffer at an odd offset, as tensors decoded from a request body are
    raw = bytearray(1) + tensor.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
    unaligned = torch.frombuffer(raw, dtype=torch.uint8, offset=1).view(dtype)
    assert not all_finite(unaligned)


def test_all_finite_passes_the_largest_values_and_integers() -> None:
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert all_finite(
            torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).min], dtype=dtype)
        )
    assert all_finite(torch.arange(10, dtype=torch.int32))


@pytest.mark.parametrize(
    ("dtype", "exponent"), [(torch.bfloat16, 0x7F80), (torch.float16, 0x7C00)], ids=["bf16", "fp16"]
)
def test_all_finite_draws_the_line_at_the_all_ones_exponent(
    dtype: torch.dtype, exponent: int
) -> None:
    def of_bits(*patterns: int) -> torch.Tensor:
        return torch.tensor(patterns, dtype=torch.int32).to(torch.int16).view(dtype)

    largest, sign = exponent - 1, 0x8000
    assert all_finite(of_bits(0, sign, 1, largest, largest | sign))
    for bad in (exponent, exponent | sign, exponent + 1, 0x7FFF, 0xFFFF):
        assert not all_finite(of_bits(0, bad)), hex(bad)
    assert all_finite(torch.empty(0, dtype=dtype))
