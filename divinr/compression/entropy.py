"""Static per-tensor entropy coding of quantised symbols (range coding with constriction).

Each tensor is coded with its own empirical histogram, sent in the stream, so the coded
size is the tensor's empirical entropy plus the histogram and at most one 32-bit word of
range-coder flush. The number of symbols is NOT stored: the container knows it from the
tensor shape. Layout of one coded tensor::

    (no symbols)          -> b""
    mode u8 | lo varint | span varint | body          symbols lie in [lo, lo + span]
      mode 0, range:  counts of symbols lo .. lo+span-1 as varints (the last symbol's count
                      is the total minus their sum), then the range coder's 32-bit words,
                      big-endian, with trailing zero bytes of the last word dropped
                      (no words at all when only one symbol occurs)
      mode 1, packed: (symbol - lo) in bit_length(span) bits each, LSB first; used when
                      smaller, i.e. for tiny tensors where the histogram would not pay off

Probabilities are derived on both sides from the integer counts (float64 counts handed to
``constriction.stream.model.Categorical(..., perfect=False)``), so they are bit-identical.
Symbols that never occur get no probability mass: the categorical model ranges over the
occurring symbols only, because constriction gives every index of its alphabet at least
the smallest representable probability.
"""

from __future__ import annotations

import constriction
import numpy as np

from divinr.errors import BitstreamError

MAX_ALPHABET = 1 << 16
_MAX_VARINT_BYTES = 10
_MODE_RANGE = 0
_MODE_PACKED = 1


def encode_varint(value: int) -> bytes:
    """LEB128 unsigned varint: 7 bits per byte, high bit set on all but the last byte.

    >>> encode_varint(300).hex()
    'ac02'
    """
    if value < 0:
        raise ValueError(f"varints are unsigned, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a varint at ``pos``; bounded to 10 bytes so hostile input cannot grow it.

    Args:
        data: Buffer.
        pos: Offset of the varint's first byte.

    Returns:
        ``(value, offset after the varint)``.
    """
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise BitstreamError(f"truncated varint at offset {pos}; the bitstream is corrupt")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise BitstreamError(f"varint longer than {_MAX_VARINT_BYTES} bytes at offset {pos}; the bitstream is corrupt")


def _as_symbols(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    _check_alphabet(alphabet_size)
    arr = np.asarray(symbols)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= alphabet_size):
        raise ValueError(f"symbols must lie in [0, {alphabet_size}), got [{arr.min()}, {arr.max()}]")
    return arr


def _check_alphabet(alphabet_size: int) -> None:
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")


def _categorical(counts: np.ndarray) -> object:
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def encode_tensor_symbols(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Entropy-code one tensor's symbols with its own histogram (see module docstring).

    Args:
        symbols: Integer symbols in ``[0, alphabet_size)``, any shape (flattened in C order).
        alphabet_size: Alphabet size, e.g. ``2**bits`` for quantised codes.

    Returns:
        Histogram and payload; the symbol count must be conveyed separately.
    """
    s = _as_symbols(symbols, alphabet_size)
    if s.size == 0:
        return b""
    counts = np.bincount(s, minlength=alphabet_size)
    used = np.flatnonzero(counts)
    lo, hi = int(used[0]), int(used[-1])
    prefix = encode_varint(lo) + encode_varint(hi - lo)

    body = bytearray(b"".join(encode_varint(int(c)) for c in counts[lo:hi]))
    if len(used) > 1:
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(np.searchsorted(used, s).astype(np.int32), _categorical(counts[used]))
        words = encoder.get_compressed().astype(">u4").tobytes()
        end = len(words)
        while end > len(words) - 3 and words[end - 1] == 0:
            end -= 1
        body += words[:end]

    width = (hi - lo).bit_length()
    if (s.size * width + 7) // 8 < len(body):
        return bytes([_MODE_PACKED]) + prefix + _pack_bits(s - lo, width)
    return bytes([_MODE_RANGE]) + prefix + bytes(body)


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    bits = (values[:, None] >> np.arange(width, dtype=np.int64)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack_bits(data: bytes, count: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * width, bitorder="little")
    return bits.reshape(count, width).astype(np.int64) @ (np.int64(1) << np.arange(width, dtype=np.int64))


def decode_tensor_symbols(data: bytes, count: int, alphabet_size: int) -> np.ndarray:
    """Inverse of :func:`encode_tensor_symbols`; every inconsistency is a BitstreamError.

    Args:
        data: Exactly the bytes returned by the encoder.
        count: Number of symbols (known to the caller, e.g. from the tensor shape).
        alphabet_size: The encoder's alphabet size.

    Returns:
        1-D int64 array of ``count`` symbols.
    """
    _check_alphabet(alphabet_size)
    if count < 0:
        raise ValueError(f"symbol count must be >= 0, got {count}")
    data = bytes(data)
    if count == 0:
        if data:
            raise BitstreamError("entropy-coded tensor has data but no symbols; the bitstream is corrupt")
        return np.zeros(0, dtype=np.int64)
    if not data:
        raise BitstreamError("entropy-coded tensor is empty; the bitstream is truncated")
    mode = data[0]
    lo, pos = decode_varint(data, 1)
    span, pos = decode_varint(data, pos)
    if lo + span >= alphabet_size:
        raise BitstreamError(
            f"symbol range [{lo}, {lo + span}] exceeds alphabet {alphabet_size}; the bitstream is corrupt"
        )
    if mode == _MODE_PACKED:
        return lo + _decode_packed(data[pos:], count, span)
    if mode == _MODE_RANGE:
        return lo + _decode_range(data, pos, count, span)
    raise BitstreamError(f"unknown entropy coding mode {mode}; the bitstream is corrupt")


def _decode_packed(body: bytes, count: int, span: int) -> np.ndarray:
    width = span.bit_length()
    if len(body) != (count * width + 7) // 8:
        raise BitstreamError("packed tensor has the wrong length; the bitstream is corrupt")
    if width == 0:
        return np.zeros(count, dtype=np.int64)
    values = _unpack_bits(body, count, width)
    if values.max() > span:
        raise BitstreamError("packed symbol outside its declared range; the bitstream is corrupt")
    return values


def _decode_range(data: bytes, pos: int, count: int, span: int) -> np.ndarray:
    counts = np.zeros(span + 1, dtype=np.int64)
    total = 0
    for i in range(span):
        value, pos = decode_varint(data, pos)
        total += value
        if total >= count:
            raise BitstreamError("symbol histogram exceeds the symbol count; the bitstream is corrupt")
        counts[i] = value
    counts[span] = count - total
    if counts[0] == 0:
        raise BitstreamError("symbol histogram does not start at a used symbol; the bitstream is corrupt")
    used = np.flatnonzero(counts)
    payload = data[pos:]
    if len(used) == 1:
        if payload:
            raise BitstreamError("single-symbol tensor carries a payload; the bitstream is corrupt")
        return np.zeros(count, dtype=np.int64)
    if not payload:
        raise BitstreamError("entropy-coded payload is missing; the bitstream is truncated")
    payload += b"\0" * (-len(payload) % 4)
    words = np.frombuffer(payload, dtype=">u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        indices = np.asarray(decoder.decode(_categorical(counts[used]), count), dtype=np.int64)
    except Exception as exc:  # constriction signals invalid data with assorted exception types
        raise BitstreamError(f"entropy-coded payload cannot be decoded ({exc}); the bitstream is corrupt") from None
    return used[indices]


def empirical_entropy_bits(symbols: np.ndarray, alphabet_size: int) -> float:
    """Total information content ``-sum_i log2 p(s_i)`` under the symbols' own histogram.

    Args:
        symbols: Integer symbols in ``[0, alphabet_size)``.
        alphabet_size: Alphabet size.

    Returns:
        Bits an ideal coder with the empirical (static) model would spend; 0 for no symbols.

    >>> empirical_entropy_bits(np.array([0, 1, 0, 1]), 2)
    4.0
    """
    s = _as_symbols(symbols, alphabet_size)
    counts = np.bincount(s, minlength=alphabet_size)
    counts = counts[counts > 0].astype(np.float64)
    return float((counts * np.log2(s.size / counts)).sum()) if s.size else 0.0
