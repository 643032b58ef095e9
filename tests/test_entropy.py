"""Tests for the static per-tensor range coder."""

from __future__ import annotations

import numpy as np
import pytest

from divinr.compression.entropy import (
    decode_tensor_symbols,
    decode_varint,
    empirical_entropy_bits,
    encode_tensor_symbols,
    encode_varint,
)
from divinr.errors import BitstreamError

RNG = np.random.default_rng(1234)


def _laplace_codes(n: int, spread: float, alphabet: int = 64) -> np.ndarray:
    """Symbols shaped like quantised INR weights: peaked around the zero point."""
    return np.clip(np.round(RNG.laplace(alphabet // 2, spread, size=n)), 0, alphabet - 1).astype(np.int64)


def _numpy_entropy_bits(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(counts * np.log2(p)).sum())


def _model_bits(symbols: np.ndarray) -> int:
    """Bits of a range-mode histogram: mode byte, lo, span and the count varints."""
    lo, hi = int(symbols.min()), int(symbols.max())
    counts = np.bincount(symbols, minlength=hi + 1)
    varints = encode_varint(lo) + encode_varint(hi - lo) + b"".join(encode_varint(int(c)) for c in counts[lo:hi])
    return 8 * (1 + len(varints))


CASES = {
    "uniform": lambda: RNG.integers(0, 64, size=7000),
    "skewed": lambda: _laplace_codes(20000, 1.5),
    "very_skewed": lambda: _laplace_codes(50000, 0.2),
    "gappy": lambda: RNG.choice([0, 5, 63], size=9000, p=[0.7, 0.2, 0.1]),
    "tiny": lambda: RNG.integers(0, 64, size=5),
    "two": lambda: np.array([3, 60]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case: str) -> None:
    symbols = CASES[case]()
    data = encode_tensor_symbols(symbols, 64)
    decoded = decode_tensor_symbols(data, symbols.size, 64)
    assert decoded.dtype == np.int64
    assert np.array_equal(decoded, symbols)


def test_round_trip_multidimensional_and_large_alphabet() -> None:
    symbols = RNG.integers(1000, 1100, size=(30, 40))
    data = encode_tensor_symbols(symbols, 1 << 16)
    assert np.array_equal(decode_tensor_symbols(data, symbols.size, 1 << 16), symbols.ravel())


def test_single_symbol_has_no_payload() -> None:
    symbols = np.full(100000, 17)
    data = encode_tensor_symbols(symbols, 64)
    assert len(data) == 3  # mode, lo = 17, span = 0
    assert np.array_equal(decode_tensor_symbols(data, symbols.size, 64), symbols)
    assert empirical_entropy_bits(symbols, 64) == 0.0


def test_empty() -> None:
    assert encode_tensor_symbols(np.zeros(0, dtype=np.int64), 64) == b""
    assert decode_tensor_symbols(b"", 0, 64).size == 0
    assert empirical_entropy_bits(np.zeros(0, dtype=np.int64), 64) == 0.0


@pytest.mark.parametrize("case", ["uniform", "skewed", "very_skewed", "gappy"])
def test_coded_size_within_two_percent_of_entropy_plus_model(case: str) -> None:
    symbols = CASES[case]()
    assert symbols.size >= 5000
    entropy = _numpy_entropy_bits(symbols)
    assert empirical_entropy_bits(symbols, 64) == pytest.approx(entropy, rel=1e-12)
    data = encode_tensor_symbols(symbols, 64)
    model_bits = _model_bits(symbols)
    assert entropy <= 8 * len(data)  # nothing beats the empirical entropy of a static model
    assert 8 * len(data) <= 1.02 * (entropy + model_bits)


def test_tiny_tensors_fall_back_to_packed_bits() -> None:
    symbols = RNG.integers(10, 18, size=20)  # 8 values: 3 bits each when packed
    data = encode_tensor_symbols(symbols, 64)
    assert len(data) <= 1 + 2 + (20 * 3 + 7) // 8


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_tensor_symbols(np.array([64]), 64)
    with pytest.raises(ValueError):
        encode_tensor_symbols(np.array([0.5]), 64)


def _decode_or_bitstream_error(data: bytes, count: int) -> None:
    """Damaged input may decode to garbage (the container's CRC catches that) but must
    never raise anything other than BitstreamError nor return out-of-range symbols."""
    try:
        out = decode_tensor_symbols(data, count, 64)
    except BitstreamError:
        return
    assert out.shape == (count,) and out.min() >= 0 and out.max() < 64


def test_damaged_data_raises_only_bitstream_error() -> None:
    rng = np.random.default_rng(0)
    for symbols in (_laplace_codes(3000, 2.0), RNG.integers(0, 64, size=9)):
        data = encode_tensor_symbols(symbols, 64)
        with pytest.raises(BitstreamError):
            decode_tensor_symbols(data[:3], symbols.size, 64)  # histogram cut short
        for cut in range(len(data)):
            _decode_or_bitstream_error(data[:cut], symbols.size)
        for _ in range(300):
            mutated = bytearray(data)
            mutated[rng.integers(len(mutated))] ^= 1 << int(rng.integers(8))
            _decode_or_bitstream_error(bytes(mutated), symbols.size)
    with pytest.raises(BitstreamError):
        decode_tensor_symbols(bytes([7, 0, 0]), 10, 64)  # unknown mode
    with pytest.raises(BitstreamError):
        decode_tensor_symbols(bytes([0, 60, 10]), 10, 64)  # range beyond the alphabet


def test_varints() -> None:
    for value in [0, 1, 127, 128, 300, 2**28, 2**63]:
        data = encode_varint(value)
        assert decode_varint(data + b"\xff", 0) == (value, len(data))
    with pytest.raises(BitstreamError):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(BitstreamError):
        decode_varint(b"\xff" * 11, 0)
