"""Payload encoding and validation (msgspec JSON), and name checks."""

from __future__ import annotations

import math
from typing import Any, Final, TypeVar
from uuid import UUID

import msgspec

from ._errors import InvalidArgument, PayloadError, PayloadTooLarge

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_NAME_LENGTH",
    "check_id",
    "check_name",
    "decode_payload",
    "encode_payload",
    "same_payload",
]

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD_BYTES: Final = 2 * 1024 * 1024
MAX_NAME_LENGTH: Final = 200

_encoder: Final = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode_payload(
    value: object,
    *,
    what: str = "payload",
    expected_type: Any = Any,
    max_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> msgspec.Raw:
    """Encode ``value`` to JSON and check it decodes back as ``expected_type``.

    Raises PayloadError naming ``what`` when the value cannot be encoded (NaN and
    infinity included: JSON has no such numbers and they would come back as null) or
    does not match the annotation, and PayloadTooLarge past ``max_bytes``.
    """
    try:
        data = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"{what} is not serialisable: {exc}") from exc
    if b"null" in data:  # msgspec writes NaN and infinity as null
        where = _non_finite(value)
        if where is not None:
            raise PayloadError(
                f"{what} holds {where}; JSON has no NaN or infinity (they would arrive as "
                "null): send None, a string or a Decimal instead"
            )
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes encoded; the limit is {max_bytes}")
    if (
        expected_type is not Any
        and expected_type is not object
        and not (type(value) is expected_type and expected_type in _SCALARS)
    ):
        decode_payload(data, expected_type, what=what)
    return msgspec.Raw(data)


_SCALARS: Final = frozenset({int, str, bool})
"""Types whose values always decode back as themselves: their check is skipped."""


def decode_payload(data: bytes | msgspec.Raw, type_: type[T] | Any, *, what: str = "payload") -> T:
    """Decode JSON ``data`` into ``type_``; a mismatch raises PayloadError naming ``what``."""
    decoder = _decoders.get(type_)
    if decoder is None:
        try:
            decoder = msgspec.json.Decoder(type_)
        except TypeError as exc:
            raise PayloadError(f"{what}: type {type_!r} is not supported: {exc}") from exc
        _decoders[type_] = decoder
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what} does not match {_type_name(type_)}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from exc


def _non_finite(value: object) -> str | None:
    """Where ``value`` holds a NaN or infinite float (``nan at $.items[2]``), if it does."""
    try:
        plain = msgspec.to_builtins(value)
    except (TypeError, ValueError):
        return None
    stack: list[tuple[str, Any]] = [("$", plain)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{item!r} at {path}"
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}", v) for key, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def _type_name(type_: Any) -> str:
    return getattr(type_, "__qualname__", None) or repr(type_)


def check_name(value: object, what: str) -> str:
    """Validate a workflow, activity or signal name: a non-empty printable string."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    if not value or not value.strip():
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{what} is {len(value)} characters; the limit is {MAX_NAME_LENGTH}")
    if not value.isprintable():
        raise InvalidArgument(f"{what} {value!r} contains control or non-printable characters")
    return value


def check_id(value: object, what: str) -> str:
    """Validate a workflow or tenant id: like a name, and without surrounding spaces.
    A ``uuid.UUID`` is taken as its canonical string."""
    if isinstance(value, UUID):
        return str(value)
    check_name(value, what)
    assert isinstance(value, str)
    if value != value.strip():
        raise InvalidArgument(f"{what} {value!r} has leading or trailing spaces")
    return value


def same_payload(taken: bytes | msgspec.Raw, recorded: bytes | msgspec.Raw, type_: Any) -> bool:
    """Whether the payload the code passes now is the one the history recorded.

    Equal JSON values match (key order, spacing and ``1`` vs ``1.0`` do not count).
    Otherwise the recorded payload is decoded into its current type ``type_`` and encoded
    again, so fields added with a default, dropped fields, and ints read as floats match
    too; a recorded payload the current type cannot read does not.
    """
    if bytes(taken) == bytes(recorded):
        return True
    try:
        now_value = msgspec.json.decode(taken)
        then_value = msgspec.json.decode(recorded)
    except msgspec.DecodeError:
        return False
    if _json_equal(now_value, then_value):
        return True
    if type_ is Any or type_ is object:
        return False
    try:
        upgraded = encode_payload(decode_payload(recorded, type_), max_bytes=None)
    except PayloadError:
        return False
    return _json_equal(now_value, msgspec.json.decode(upgraded))


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of decoded JSON values where 1 == 1.0 but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
