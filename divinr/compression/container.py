"""The divinr bitstream container: a declared, versioned header plus named sections.

Layout (all integers little-endian)::

    magic  b"DVNR"                     4 bytes
    format version                     u16
    header field count                 u8   (must equal the schema's length)
    per field, in schema order:        kind tag u8 (FieldKind value) + value
        U8/U16/U32/U64/I32/F32/F64     fixed width
        STR                            u8 length + UTF-8 (<= 255 bytes)
        BYTES                          u16 length + bytes (<= 4096)
        U32LIST                        u8 count (<= 64) + u32 items
    section count                      u16
    per section:                       u8 name length + UTF-8 name, u32 length, payload
    CRC32 (zlib) of all bytes above    u32

The schema (an ordered tuple of :class:`Field`) is declared in code, not sent: the stream
carries only the values plus one kind tag per field, which lets the decoder check that the
file matches the schema it expects. Schemas are keyed by ``(format version, kind)``: the
first field of every schema is a u8 *kind* (divinr: the codec kind), so a reader peeks at
bytes 7..8 (its tag and value), picks the schema of that kind and version, and only then
parses the rest. Each kind numbers its versions on its own: "newer" and "no longer
supported" are judged against the versions known for the stream's kind. The CRC catches corruption
and truncation before anything is parsed; the parser still bounds every length against
the bytes that remain and refuses non-finite floats, so a malformed file can only ever raise
:class:`BitstreamError`. No pickle, no eval: every byte has a declared meaning.

Reading a header needs neither torch nor diffusers (``divinr info`` stays fast): the quantiser
module, which imports torch, is only loaded when a tensor record is coded.

Sections carry the entropy-coded tensors. :func:`encode_quantized_tensor` stores one
quantised tensor (shape, quantiser, entropy-coded codes); :func:`encode_raw_tensor` stores
a tensor kept at float16/float32 precision (for the few values not worth quantising).
:func:`bits_by_part` splits the file size into header and sections for rate accounting.
"""

from __future__ import annotations

import enum
import math
import operator
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from divinr.compression.entropy import decode_tensor_symbols, decode_varint, encode_tensor_symbols, encode_varint
from divinr.errors import BitstreamError

if TYPE_CHECKING:
    from divinr.compression.quant import QuantParams

MAGIC = b"DVNR"
MAX_STR_BYTES = 255
MAX_BYTES_LEN = 4096
MAX_LIST_ITEMS = 64
MAX_FIELDS = 255
MAX_SECTIONS = 0xFFFF
MAX_SECTION_BYTES = 0xFFFFFFFF
MAX_TENSOR_RANK = 6
MAX_TENSOR_NUMEL = 1 << 28
# Versions up to this far past the newest known one read as "written by a newer divinr"; a larger
# number is not a plausible release and means the file is corrupt.
MAX_VERSION_LEAP = 8

_PREAMBLE = struct.Struct("<4sH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CRC = _U32
_SECTION_COUNT = _U16
_QUANT_HEAD = struct.Struct("<BBf")  # bits, flags, scale
_MIN_SIZE = _PREAMBLE.size + 1 + _SECTION_COUNT.size + _CRC.size


class FieldKind(enum.IntEnum):
    """Primitive header value types; the value is the tag written before each field."""

    U8 = 1
    U16 = 2
    U32 = 3
    U64 = 4
    I32 = 5
    F32 = 6
    F64 = 7
    STR = 8
    BYTES = 9
    U32LIST = 10


_FIXED = {
    FieldKind.U8: struct.Struct("<B"),
    FieldKind.U16: struct.Struct("<H"),
    FieldKind.U32: struct.Struct("<I"),
    FieldKind.U64: struct.Struct("<Q"),
    FieldKind.I32: struct.Struct("<i"),
    FieldKind.F32: struct.Struct("<f"),
    FieldKind.F64: struct.Struct("<d"),
}


@dataclass(frozen=True)
class Field:
    """One declared header field."""

    name: str
    kind: FieldKind


Schema = tuple[Field, ...]
SchemaKey = tuple[int, int]
"""``(format version, kind)``: what selects a stream's schema."""
HeaderValue = Union[int, float, str, bytes, tuple[int, ...]]


class _Reader:
    """Cursor over a buffer that checks every read against the bytes left."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise BitstreamError(
                f"bitstream truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, only {self.left} left"
            )
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))

    def varint(self, what: str) -> int:
        try:
            value, self.pos = decode_varint(self.data, self.pos)
        except BitstreamError:
            msg = f"bitstream truncated or corrupt: bad varint for {what} at offset {self.pos}"
            raise BitstreamError(msg) from None
        return value

    def utf8(self, n: int, what: str) -> str:
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError(f"{what} is not valid UTF-8; the bitstream is corrupt") from None

    def rest(self) -> bytes:
        return self.take(self.left, "rest")


def _check_schema(schema: Schema) -> None:
    if not schema or schema[0].kind is not FieldKind.U8:
        raise ValueError("a schema starts with its u8 kind field, which selects the schema when a stream is read")
    if len(schema) > MAX_FIELDS:
        raise ValueError(f"a schema holds at most {MAX_FIELDS} fields, got {len(schema)}")
    names = [f.name for f in schema]
    if len(set(names)) != len(names):
        raise ValueError("schema field names must be unique")
    for f in schema:
        if not isinstance(f.kind, FieldKind):
            raise ValueError(f"field {f.name!r} has kind {f.kind!r}, not a FieldKind")


def _encode_value(field: Field, value: HeaderValue) -> bytes:
    kind = field.kind
    try:
        if kind in (FieldKind.F32, FieldKind.F64):
            number = float(value)  # type: ignore[arg-type]
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            return _FIXED[kind].pack(number)
        if kind in _FIXED:
            return _FIXED[kind].pack(operator.index(value))  # type: ignore[arg-type]
        if kind is FieldKind.STR:
            if not isinstance(value, str):
                raise TypeError("expected str")
            raw = value.encode("utf-8")
            if len(raw) > MAX_STR_BYTES:
                raise ValueError(f"longer than {MAX_STR_BYTES} bytes")
            return bytes([len(raw)]) + raw
        if kind is FieldKind.BYTES:
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError("expected bytes")
            if len(value) > MAX_BYTES_LEN:
                raise ValueError(f"longer than {MAX_BYTES_LEN} bytes")
            return _U16.pack(len(value)) + bytes(value)
        items = [operator.index(v) for v in value]  # type: ignore[union-attr]
        if len(items) > MAX_LIST_ITEMS:
            raise ValueError(f"more than {MAX_LIST_ITEMS} items")
        return bytes([len(items)]) + struct.pack(f"<{len(items)}I", *items)
    except (struct.error, OverflowError, TypeError, ValueError, UnicodeEncodeError) as exc:
        raise BitstreamError(f"header field {field.name!r} ({kind.name}) cannot hold {value!r}: {exc}") from None


def _decode_value(reader: _Reader, field: Field) -> HeaderValue:
    kind = field.kind
    what = f"header field {field.name!r}"
    if kind in _FIXED:
        value = reader.unpack(_FIXED[kind], what)[0]
        if isinstance(value, float) and not math.isfinite(value):
            raise BitstreamError(f"{what} is {value}, not a finite number; the bitstream is corrupt")
        return value
    if kind is FieldKind.STR:
        return reader.utf8(reader.take(1, what)[0], what)
    if kind is FieldKind.BYTES:
        (n,) = reader.unpack(_U16, what)
        if n > MAX_BYTES_LEN:
            raise BitstreamError(f"{what} declares {n} bytes, more than {MAX_BYTES_LEN}; the bitstream is corrupt")
        return reader.take(n, what)
    n = reader.take(1, what)[0]
    if n > MAX_LIST_ITEMS:
        raise BitstreamError(f"{what} declares {n} items, more than {MAX_LIST_ITEMS}; the bitstream is corrupt")
    return reader.unpack(struct.Struct(f"<{n}I"), what)


def _encode_header(schema: Schema, header_values: Mapping[str, HeaderValue], version: int) -> bytes:
    """Magic, version and field table (everything before the section count)."""
    _check_schema(schema)
    if not 0 <= version <= 0xFFFF:
        raise ValueError(f"format version must fit in u16, got {version}")
    names = {f.name for f in schema}
    if set(header_values) != names:
        raise ValueError(
            f"header values do not match the schema: missing {sorted(names - set(header_values))}, "
            f"unknown {sorted(set(header_values) - names)}"
        )
    parts = [_PREAMBLE.pack(MAGIC, version), bytes([len(schema)])]
    for f in schema:
        parts.append(bytes([f.kind]) + _encode_value(f, header_values[f.name]))
    return b"".join(parts)


def _encode_section(name: str, payload: bytes) -> bytes:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_STR_BYTES:
        raise ValueError(f"section name must be 1..{MAX_STR_BYTES} UTF-8 bytes, got {name!r}")
    if len(payload) > MAX_SECTION_BYTES:
        raise ValueError(f"section {name!r} is larger than {MAX_SECTION_BYTES} bytes")
    return bytes([len(raw)]) + raw + _U32.pack(len(payload)) + bytes(payload)


def header_bits(schema: Schema, header_values: Mapping[str, HeaderValue]) -> int:
    """Bits of container overhead outside the sections: header, section count and CRC.

    Args:
        schema: The header schema.
        header_values: The header values.

    Returns:
        Size in bits; with :func:`section_bits` of every section it sums to the file size.
    """
    return 8 * (len(_encode_header(schema, header_values, version=0)) + _SECTION_COUNT.size + _CRC.size)


def section_bits(name: str, payload: bytes) -> int:
    """Bits one section takes in the container, name and length prefix included."""
    return 8 * len(_encode_section(name, payload))


def bits_by_part(
    schema: Schema, header_values: Mapping[str, HeaderValue], sections: Sequence[tuple[str, bytes]]
) -> list[tuple[str, int]]:
    """Split a container's size into ``("header", bits)`` and one ``(name, bits)`` per section.

    Returns:
        Parts in file order; their bits sum exactly to ``8 * len(write_container(...))``.
    """
    return [("header", header_bits(schema, header_values))] + [(n, section_bits(n, p)) for n, p in sections]


def write_container(
    schema: Schema,
    header_values: Mapping[str, HeaderValue],
    sections: Sequence[tuple[str, bytes]],
    *,
    version: int,
) -> bytes:
    """Serialise a header and named payload sections into one bitstream.

    Args:
        schema: Declared header fields for ``version``.
        header_values: A value for every schema field (ints, floats, str, bytes or int lists).
        sections: ``(name, payload)`` pairs with unique names, in file order.
        version: Format version written to the file.

    Returns:
        The complete bitstream, CRC32 included.
    """
    names = [n for n, _ in sections]
    if len(set(names)) != len(names):
        raise ValueError("section names must be unique")
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"at most {MAX_SECTIONS} sections, got {len(sections)}")
    body = b"".join(
        [_encode_header(schema, header_values, version), _SECTION_COUNT.pack(len(sections))]
        + [_encode_section(n, p) for n, p in sections]
    )
    return body + _CRC.pack(zlib.crc32(body))


def _peek_kind(data: bytes) -> int:
    """The kind field's value, read before the schema is known: it is the first field of every schema."""
    count, tag, kind = data[_PREAMBLE.size : _PREAMBLE.size + 3]
    if count == 0 or tag != FieldKind.U8:
        raise BitstreamError("the header does not start with its u8 kind field; the bitstream is corrupt")
    return kind


def read_container(
    data: bytes, schemas: Mapping[SchemaKey, Schema]
) -> tuple[int, dict[str, HeaderValue], list[tuple[str, bytes]]]:
    """Parse a bitstream written by :func:`write_container`.

    Args:
        data: The file's bytes.
        schemas: The header schema of every ``(format version, kind)`` this decoder can read.

    Returns:
        ``(version, header values, sections)``; the kind is the first header value.

    Raises:
        BitstreamError: For any malformed input (and nothing else, whatever the bytes).
    """
    if not schemas:
        raise ValueError("read_container needs at least one schema")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read_container needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise BitstreamError(f"file is too short to be a divinr bitstream ({len(data)} bytes); it is truncated")
        raise BitstreamError("not a divinr bitstream (wrong magic number); pass a file written by divinr")
    if len(data) < _PREAMBLE.size:
        raise BitstreamError(f"file is too short to be a divinr bitstream ({len(data)} bytes); it is truncated")
    version = _PREAMBLE.unpack_from(data)[1]
    newest = max(v for v, _ in schemas)
    if version > newest + MAX_VERSION_LEAP:
        raise BitstreamError(
            f"bitstream is corrupt or not a divinr file: format v{version} is implausible "
            f"(this decoder reads up to v{newest}); re-transfer or re-encode the file"
        )
    if len(data) < _MIN_SIZE:
        raise BitstreamError(f"file is too short to be a divinr bitstream ({len(data)} bytes); it is truncated")
    kind = _peek_kind(data)
    versions = sorted(v for v, k in schemas if k == kind)
    if not versions:
        kinds = ", ".join(str(k) for k in sorted({k for _, k in schemas}))
        raise BitstreamError(f"header kind {kind} is not one this decoder reads ({kinds}); the bitstream is corrupt")
    if version > versions[-1]:
        raise BitstreamError(
            f"bitstream written by a newer divinr (format v{version}), "
            f"this decoder reads kind {kind} up to v{versions[-1]}; upgrade divinr"
        )
    if version not in versions:
        raise BitstreamError(
            f"bitstream format v{version} is no longer supported (this decoder reads kind {kind} as "
            f"{', '.join(f'v{v}' for v in versions)}); "
            "decode it with the divinr release that wrote it"
        )
    if zlib.crc32(data[: -_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        raise BitstreamError("bitstream is corrupt or truncated (CRC32 mismatch); re-transfer or re-encode the file")

    schema = schemas[version, kind]
    _check_schema(schema)
    reader = _Reader(data[: -_CRC.size], pos=_PREAMBLE.size)
    count = reader.take(1, "header field count")[0]
    if count != len(schema):
        raise BitstreamError(
            f"header has {count} fields, format v{version} declares {len(schema)}; the bitstream is corrupt"
        )
    values: dict[str, HeaderValue] = {}
    for field in schema:
        tag = reader.take(1, f"kind of header field {field.name!r}")[0]
        if tag != field.kind:
            raise BitstreamError(
                f"header field {field.name!r} has kind tag {tag}, format v{version} declares {field.kind.name}; "
                "the bitstream is corrupt"
            )
        values[field.name] = _decode_value(reader, field)

    (num_sections,) = reader.unpack(_SECTION_COUNT, "section count")
    sections: list[tuple[str, bytes]] = []
    for i in range(num_sections):
        name_len = reader.take(1, f"name length of section {i}")[0]
        if name_len == 0:
            raise BitstreamError(f"section {i} has an empty name; the bitstream is corrupt")
        name = reader.utf8(name_len, f"name of section {i}")
        (length,) = reader.unpack(_U32, f"length of section {name!r}")
        sections.append((name, reader.take(length, f"section {name!r}")))
    if len({n for n, _ in sections}) != len(sections):
        raise BitstreamError("bitstream repeats a section name; the bitstream is corrupt")
    if reader.left:
        raise BitstreamError(f"{reader.left} trailing bytes after the last section; the bitstream is corrupt")
    return version, values, sections


# --- tensors ------------------------------------------------------------------------------

_FLAG_ALL_ZERO = 1


class RawDtype(enum.IntEnum):
    """Precision of a tensor stored without quantisation; the value is its on-disk tag."""

    FLOAT16 = 1
    FLOAT32 = 2


_RAW_NUMPY = {RawDtype.FLOAT16: np.dtype("<f2"), RawDtype.FLOAT32: np.dtype("<f4")}


def _encode_shape(shape: Sequence[int]) -> tuple[bytes, int]:
    dims = [operator.index(d) for d in shape]
    if len(dims) > MAX_TENSOR_RANK or any(d < 0 for d in dims) or math.prod(dims) > MAX_TENSOR_NUMEL:
        raise ValueError(
            f"tensor shape {tuple(dims)} is not storable (rank <= {MAX_TENSOR_RANK}, numel <= {MAX_TENSOR_NUMEL})"
        )
    return bytes([len(dims)]) + b"".join(encode_varint(d) for d in dims), math.prod(dims)


def _decode_shape(reader: _Reader) -> tuple[tuple[int, ...], int]:
    rank = reader.take(1, "tensor rank")[0]
    if rank > MAX_TENSOR_RANK:
        raise BitstreamError(f"tensor rank {rank} exceeds {MAX_TENSOR_RANK}; the bitstream is corrupt")
    dims = tuple(reader.varint("tensor dimension") for _ in range(rank))
    numel = math.prod(dims)
    if numel > MAX_TENSOR_NUMEL or any(d > MAX_TENSOR_NUMEL for d in dims):
        raise BitstreamError(f"tensor shape {dims} exceeds {MAX_TENSOR_NUMEL} elements; the bitstream is corrupt")
    return dims, numel


def _params_problem(bits: int, scale: float, zero_point: int) -> str | None:
    from divinr.compression.quant import MAX_BITS

    if not 1 <= bits <= MAX_BITS:
        return f"bits {bits} outside 1..{MAX_BITS}"
    if not (math.isfinite(scale) and scale > 0):
        return f"scale {scale} is not a positive finite number"
    if not 0 <= zero_point < (1 << bits):
        return f"zero point {zero_point} outside [0, {1 << bits})"
    return None


def _quant_head(codes: np.ndarray, params: QuantParams, shape: Sequence[int]) -> tuple[bytes, np.ndarray, bool]:
    """Shape and quantiser of one record, the flattened codes, and whether all are the zero point."""
    shape_bytes, numel = _encode_shape(shape)
    problem = _params_problem(params.bits, params.scale, params.zero_point)
    if problem is None and float(np.float32(params.scale)) != params.scale:
        problem = f"scale {params.scale} is not float32-exact"
    if problem:
        raise ValueError(f"invalid quantiser: {problem}")
    flat = np.asarray(codes).reshape(-1)
    if flat.size != numel:
        raise ValueError(f"{flat.size} codes do not fill shape {tuple(shape)}")
    all_zero = bool(np.all(flat == params.zero_point))
    head = shape_bytes + _QUANT_HEAD.pack(params.bits, _FLAG_ALL_ZERO if all_zero else 0, params.scale)
    return head + encode_varint(params.zero_point), flat, all_zero


def _read_quant_head(reader: _Reader, expected_shape: Sequence[int] | None) -> tuple[tuple[int, ...], int, QuantParams, bool]:
    """Inverse of :func:`_quant_head`: (shape, numel, quantiser, all-zero flag), all validated."""
    from divinr.compression.quant import QuantParams

    shape, numel = _decode_shape(reader)
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise BitstreamError(f"tensor shape {shape} does not match the expected {tuple(expected_shape)}; the bitstream is corrupt")
    bits, flags, scale = reader.unpack(_QUANT_HEAD, "quantiser")
    zero_point = reader.varint("zero point")
    problem = _params_problem(bits, scale, zero_point)
    if problem:
        raise BitstreamError(f"invalid quantiser in tensor: {problem}; the bitstream is corrupt")
    if flags & ~_FLAG_ALL_ZERO:
        raise BitstreamError(f"unknown tensor flags {flags:#x}; the bitstream is corrupt")
    return shape, numel, QuantParams(scale=scale, zero_point=zero_point, bits=bits), bool(flags & _FLAG_ALL_ZERO)


def encode_quantized_tensor(codes: np.ndarray, params: QuantParams, shape: Sequence[int]) -> bytes:
    """Serialise one quantised tensor: shape, quantiser and entropy-coded codes.

    Layout: rank u8 | dims varint x rank | bits u8 | flags u8 | scale f32 | zero point
    varint | entropy-coded codes (:mod:`divinr.compression.entropy`). Flag bit 0 marks a
    tensor whose codes all equal the zero point (all weights zero): no payload follows.

    Args:
        codes: Integer codes in ``[0, 2**params.bits)``, ``prod(shape)`` of them.
        params: The quantiser (its scale must be float32-exact, as :func:`quant_params` makes it).
        shape: Tensor shape, rank <= 6 and at most 2**28 elements.

    Returns:
        Self-contained bytes for a container section (or part of one, if length-prefixed).
    """
    head, flat, all_zero = _quant_head(codes, params, shape)
    return head if all_zero else head + encode_tensor_symbols(flat, 1 << params.bits)


def decode_quantized_tensor(
    data: bytes, expected_shape: Sequence[int] | None = None
) -> tuple[np.ndarray, QuantParams, tuple[int, ...]]:
    """Inverse of :func:`encode_quantized_tensor`; any malformation is a BitstreamError.

    Args:
        data: One tensor record.
        expected_shape: When the caller knows the shape (the decoder does, from the header's
            architecture), a different stored shape is rejected before anything is allocated.

    Returns:
        ``(codes as int64 array of the stored shape, quantiser, shape)``.
    """
    reader = _Reader(bytes(data))
    shape, numel, params, all_zero = _read_quant_head(reader, expected_shape)
    payload = reader.rest()
    if all_zero:
        if payload:
            raise BitstreamError("all-zero tensor carries a payload; the bitstream is corrupt")
        codes = np.full(numel, params.zero_point, dtype=np.int64)
    else:
        codes = decode_tensor_symbols(payload, numel, 1 << params.bits)
    return codes.reshape(shape), params, shape


def encode_quantized_group(items: Sequence[tuple[np.ndarray, QuantParams, Sequence[int]]]) -> bytes:
    """Serialise quantised tensors that share one entropy model.

    Each tensor keeps its own shape, scale and zero point; their codes are range-coded together
    with a single histogram. For many short tensors (NOLA's 182 coefficient vectors of 500)
    one histogram costs far less than one per tensor. All tensors must use the same width.

    Layout: every record's head (as in :func:`encode_quantized_tensor`) | one entropy-coded
    payload of the codes of the tensors not flagged all-zero, in order.
    """
    widths = {params.bits for _, params, _ in items}
    if len(widths) > 1:
        raise ValueError(f"a group needs one quantiser width, got {sorted(widths)}")
    heads, payload = [], []
    for codes, params, shape in items:
        head, flat, all_zero = _quant_head(codes, params, shape)
        heads.append(head)
        if not all_zero:
            payload.append(flat)
    symbols = np.concatenate(payload) if payload else np.zeros(0, dtype=np.int64)
    return b"".join(heads) + encode_tensor_symbols(symbols, 1 << widths.pop()) if items else b""


def decode_quantized_group(
    data: bytes, expected_shapes: Sequence[Sequence[int]]
) -> list[tuple[np.ndarray, QuantParams, tuple[int, ...]]]:
    """Inverse of :func:`encode_quantized_group` for tensors of the given shapes."""
    reader = _Reader(bytes(data))
    heads = [_read_quant_head(reader, shape) for shape in expected_shapes]
    widths = {params.bits for _, _, params, _ in heads}
    if len(widths) > 1:
        raise BitstreamError(f"tensors of one group use widths {sorted(widths)}; the bitstream is corrupt")
    count = sum(numel for _, numel, _, all_zero in heads if not all_zero)
    payload = reader.rest()
    symbols = decode_tensor_symbols(payload, count, 1 << widths.pop()) if count else np.zeros(0, dtype=np.int64)
    if not count and payload:
        raise BitstreamError("an all-zero tensor group carries a payload; the bitstream is corrupt")
    out, pos = [], 0
    for shape, numel, params, all_zero in heads:
        if all_zero:
            codes = np.full(numel, params.zero_point, dtype=np.int64)
        else:
            codes, pos = symbols[pos : pos + numel], pos + numel
        out.append((codes.reshape(shape), params, shape))
    return out


def encode_raw_tensor(values: np.ndarray, dtype: RawDtype = RawDtype.FLOAT32) -> bytes:
    """Serialise a tensor kept at float precision (e.g. a handful of values not worth quantising).

    Layout: dtype tag u8 | rank u8 | dims varint x rank | little-endian values.

    Args:
        values: Array of any float dtype, rank <= 6.
        dtype: Stored precision.

    Returns:
        Self-contained bytes.
    """
    arr = np.asarray(values)
    shape_bytes, _ = _encode_shape(arr.shape)
    if not np.isfinite(arr).all():
        raise ValueError("values include NaN or infinities, which a decoder refuses")
    with np.errstate(over="ignore"):  # overflow is reported below, as an error
        stored = arr.astype(_RAW_NUMPY[RawDtype(dtype)])
    if not np.isfinite(stored).all():
        raise ValueError(f"values overflow {RawDtype(dtype).name}; store them as FLOAT32")
    return bytes([RawDtype(dtype)]) + shape_bytes + stored.tobytes()


def decode_raw_tensor(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_raw_tensor`.

    Returns:
        Array of the stored shape in float16 or float32 (native byte order), all finite.
    """
    reader = _Reader(bytes(data))
    tag = reader.take(1, "raw tensor dtype")[0]
    try:
        np_dtype = _RAW_NUMPY[RawDtype(tag)]
    except ValueError:
        raise BitstreamError(f"unknown raw tensor dtype tag {tag}; the bitstream is corrupt") from None
    shape, numel = _decode_shape(reader)
    if reader.left != numel * np_dtype.itemsize:
        raise BitstreamError(
            f"raw tensor of shape {shape} needs {numel * np_dtype.itemsize} bytes, found {reader.left}; "
            "the bitstream is corrupt"
        )
    values = np.frombuffer(reader.rest(), dtype=np_dtype).astype(np_dtype.newbyteorder("=")).reshape(shape)
    if not np.isfinite(values).all():
        raise BitstreamError(f"raw tensor of shape {shape} holds NaN or infinite values; the bitstream is corrupt")
    return values
