"""Stream headers declared as tables: every field once, with everything the codec knows about it.

An :class:`Element` is a container :class:`~divinr.compression.container.Field` (name and wire
kind) plus where its value lives in the typed header (a dotted attribute path such as
``inr.channels``), the values the decoder can handle (bounds, or the codes of a symbolic value)
and nothing else. A :class:`HeaderSchema` is the elements of one ``(format version, kind)``
plus the few cross-field rules no single element can state. Everything else is generic and
driven by the table, in the spirit of Cool-Chic's ``bitstream/header``::

    typed header --to_fields--> field values --container--> bytes
    typed header <-from_fields-- field values <--container-- bytes
                      problem(): bounds, codes and rules, checked on both paths

Nothing here imports torch: the typed header's nested configs (which live in torch modules) are
built by a loader the schema calls only in :meth:`HeaderSchema.from_fields`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from divinr.compression.container import Field, FieldKind, HeaderValue, SchemaKey
from divinr.errors import BitstreamError, PresetError

H = TypeVar("H")
T = TypeVar("T")
Rule = Callable[[Mapping[str, HeaderValue]], str | None]
"""A cross-field check on raw field values: a phrase naming the problem, or None."""

_FLOATS = (FieldKind.F32, FieldKind.F64)
_TEXT = (FieldKind.STR, FieldKind.BYTES)


class _Default:
    """The symbol of a code that stands for the typed config's own default value."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


@dataclass(frozen=True)
class Element(Field):
    """One header field, declared once.

    Attributes:
        path: Where the value lives in the typed header: ``attr`` or ``part.attr``; None for a
            field a read-only legacy schema still parses but the typed header no longer has.
        low: Lowest value (integers and list items: inclusive; floats: exclusive); None: any.
        high: Highest value (inclusive); None: any value the wire kind holds.
        codes: For a symbolic value, the code of each symbol (:data:`DEFAULT`: the config's
            default); the field then takes exactly these codes.
    """

    path: str | None = None
    low: float | None = None
    high: float | None = None
    codes: Mapping[Any, int] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.path is not None and self.path.count(".") > 1:
            raise ValueError(f"element {self.name}: a path has at most one part (part.attr), got {self.path!r}")
        if (self.low is None) != (self.high is None):
            raise ValueError(f"element {self.name}: give both bounds or neither")
        if self.low is not None and (self.kind in _TEXT or self.codes is not None):
            raise ValueError(f"element {self.name}: bounds apply to numbers, not text or codes")

    def problem(self, value: HeaderValue) -> str | None:
        """What the decoder cannot handle about this field's value, in a phrase, or None."""
        if self.codes is not None:
            if value not in self.codes.values():
                return f"header field {self.name}={value} is none of the codes {sorted(self.codes.values())}"
            return None
        if self.low is None or self.high is None:
            return None
        low, high = self.low, self.high
        if isinstance(value, tuple):
            if any(not low <= x <= high for x in value):
                return f"header field {self.name}={list(value)} has items outside {low}..{high}"
        elif isinstance(value, float):
            if not (math.isfinite(value) and low < value <= high):
                return f"header field {self.name}={value} outside ({low:g}, {high:g}]"
        elif isinstance(value, int) and not low <= value <= high:
            return f"header field {self.name}={value} outside {low}..{high}"
        return None

    def encode(self, header: object) -> HeaderValue:
        """This field's value in ``header``: its code, or the plain value the container holds."""
        if self.path is None:
            raise ValueError(f"header field {self.name} belongs to a read-only legacy schema")
        head, _, attr = self.path.rpartition(".")
        owner = getattr(header, head) if head else header
        value = getattr(owner, attr)
        if self.codes is None:
            return self._plain(value)
        for symbol, code in self.codes.items():
            if value == (_default_of(owner, attr) if symbol is DEFAULT else symbol):
                return code
        raise PresetError(
            f"{type(owner).__name__}.{attr}={value!r} cannot be signalled in the stream header "
            f"(field {self.name} codes only {list(self.codes)})"
        )

    def decode(self, value: HeaderValue) -> Any:
        """The typed value of a checked field value: the symbol of its code, or the value itself."""
        if self.codes is None:
            return value
        return {code: symbol for symbol, code in self.codes.items()}[value]

    def _plain(self, value: Any) -> HeaderValue:
        """The value in the Python type a reader gets back, so that checks see what a decoder would."""
        try:
            if self.kind in _FLOATS:
                return float(value)
            if self.kind in _TEXT:
                return value
            if self.kind is FieldKind.U32LIST:
                return tuple(operator.index(x) for x in value)
            return operator.index(value)
        except TypeError:
            raise BitstreamError(f"header field {self.name!r} ({self.kind.name}) cannot hold {value!r}") from None


def _default_of(owner: Any, attr: str) -> object:
    """The default of dataclass field ``attr`` of ``owner``."""
    spec = {f.name: f for f in dataclasses.fields(owner)}[attr]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def value_of(values: Mapping[str, HeaderValue], name: str, kind: type[T]) -> T:
    """Field ``name`` as the Python type its wire kind gives (for rules that do arithmetic on it)."""
    value = values[name]
    if not isinstance(value, kind):
        raise TypeError(f"header field {name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class HeaderSchema(Generic[H]):
    """The header of one ``(format version, kind)``: its elements, in wire order, and its rules.

    Attributes:
        version: Format version written to the stream.
        elements: The fields; the first is the kind, coded with this schema's one kind.
        header: The typed header class :meth:`from_fields` builds.
        parts: Loads the constructors of the typed header's parts (``{"inr": INRConfig, ...}``);
            called only when a typed header is built, so reading fields stays torch-free.
        rules: Cross-field checks, run after every element's own.
    """

    version: int
    elements: tuple[Element, ...]
    header: type[H]
    parts: Callable[[], Mapping[str, Callable[..., Any]]]
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        codes = self.elements[0].codes if self.elements else None
        if codes is None or len(codes) != 1:
            raise ValueError(f"format v{self.version}: the first element is the kind, with exactly one code")

    @property
    def kind(self) -> int:
        """The codec kind this schema is for (the single code of its first element)."""
        return next(iter((self.elements[0].codes or {}).values()))

    @property
    def key(self) -> SchemaKey:
        """What a reader matches against the stream's version and kind."""
        return self.version, self.kind

    @property
    def writable(self) -> bool:
        """Whether every field has a place in the typed header (legacy schemas are read-only)."""
        return all(e.path is not None for e in self.elements)

    def problem(self, values: Mapping[str, HeaderValue]) -> str | None:
        """The first value the decoder cannot handle, in a phrase, or None (pure Python, no torch)."""
        for element in self.elements:
            problem = element.problem(values[element.name])
            if problem:
                return problem
        for rule in self.rules:
            problem = rule(values)
            if problem:
                return problem
        return None

    def to_fields(self, header: H) -> dict[str, HeaderValue]:
        """The field values of ``header``; one the decoder could not handle is a BitstreamError."""
        values = {e.name: e.encode(header) for e in self.elements}
        problem = self.problem(values)
        if problem:
            raise BitstreamError(f"{problem}; divinr's decoder could not read such a stream")
        return values

    def from_fields(self, values: Mapping[str, HeaderValue]) -> H:
        """Check the values and build the typed header; any inconsistency is a BitstreamError."""
        problem = self.problem(values)
        if problem:
            raise BitstreamError(f"{problem}; the bitstream is corrupt")
        groups: dict[str, dict[str, Any]] = {}
        for element in self.elements:
            if element.path is None:
                continue
            head, _, attr = element.path.rpartition(".")
            group = groups.setdefault(head, {})
            value = element.decode(values[element.name])
            if value is not DEFAULT:
                group[attr] = value
        top = groups.pop("", {})
        constructors = self.parts()
        try:
            top.update({head: constructors[head](**group) for head, group in groups.items()})
            return self.header(**top)
        except PresetError as exc:
            raise BitstreamError(f"invalid header value ({exc}); the bitstream is corrupt") from None

    def view(self, values: Mapping[str, HeaderValue]) -> dict[str, Any]:
        """The typed header's layout with plain values (symbols for codes), for display; torch-free."""
        out: dict[str, Any] = {}
        for element in self.elements:
            if element.path is None:
                continue
            head, _, attr = element.path.rpartition(".")
            (out.setdefault(head, {}) if head else out)[attr] = element.decode(values[element.name])
        return out
