"""Documents from BSON or extended JSON to the JSON the PostgreSQL store keeps, and checked.

Extended JSON is parsed with :mod:`bson.json_util`; the rules are in the
package's docstring (:mod:`nvsentinel_store.migrate`). Everything that cannot
be imported raises :class:`InvalidDocument`, whose message says why and
where in the document.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from bson import json_util
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.json_util import JSONOptions
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from nvsentinel_store.query import (
    MAX_NESTING_DEPTH,
    contains_nul,
    encode_datetime,
    json_text_too_deep,
)

#: Extended JSON as mongoexport writes it; datetimes in UTC, UUIDs as uuid.UUID,
#: dates beyond Python's range kept as DatetimeMS (and then rejected).
JSON_OPTIONS: Final = JSONOptions(
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)
#: The same decoding for documents read live from MongoDB.
CODEC_OPTIONS: Final[CodecOptions[dict[str, Any]]] = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)

#: Why a document nesting too deep is rejected.
TOO_DEEP: Final = (
    f"objects and arrays nested deeper than {MAX_NESTING_DEPTH} levels (the limit; "
    "MongoDB's own is 100)"
)


class InvalidDocument(ValueError):
    """A document that cannot be imported; the message says why (and where in it)."""


def to_store_json(value: Any, path: str = "") -> Any:
    """A value decoded from BSON or extended JSON, as the PostgreSQL store keeps it."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):  # also Int64
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidDocument(f"{path or 'document'}: {value!r} cannot be stored in JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[str(key)] = to_store_json(item, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list | tuple):
        return [to_store_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype == 4 and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    if isinstance(value, bytes):  # Binary is a bytes subclass
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal128):
        return _decimal(value.to_decimal(), path)
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    if isinstance(value, DatetimeMS):
        raise InvalidDocument(
            f"{path}: date {int(value)} ms since 1970 is outside the years 1-9999"
        )
    raise InvalidDocument(
        f"{path or 'document'}: BSON type {type(value).__name__} is not supported"
    )


def rfc3339(value: datetime) -> str:
    """:func:`~nvsentinel_store.query.encode_datetime`'s exact output, without strftime's cost."""
    if value.tzinfo is None or value.year < 1000:
        return encode_datetime(value)
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    if len(text) != 32 or not text.endswith("+00:00"):
        return encode_datetime(value)
    return text[:26] + "Z"


def _decimal(number: Decimal, path: str) -> Any:
    if not number.is_finite():
        raise InvalidDocument(f"{path}: decimal {number} cannot be stored in JSON")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(number)
    as_float = float(number)
    if Decimal(repr(as_float)) == number:
        return as_float
    return str(number)


def _object_hook(obj: dict[str, Any]) -> Any:
    """json.loads hook: extended JSON objects through bson.json_util, converted at once.

    Extended JSON wrappers have one to three keys, the first starting with
    ``$``; larger objects and objects without such a key are returned as they
    are. Two shortcuts, several times faster and with json_util's result:
    ``{"$oid": <24 hex digits>}`` is the lower-case hex string, and the ISO
    date strings of relaxed mode go through :meth:`datetime.fromisoformat`;
    anything they do not take goes to json_util.
    """
    if len(obj) > 3:
        return obj
    for key in obj:
        if key[:1] == "$":
            break
    else:
        return obj
    if len(obj) == 1:
        oid = obj.get("$oid")
        if type(oid) is str and len(oid) == 24:
            try:
                int(oid, 16)
            except ValueError:
                pass  # let json_util decide
            else:
                return oid.lower()
    date = obj.get("$date")
    if type(date) is str and len(obj) == 1 and len(date) >= 20 and date[10] == "T":
        try:
            return rfc3339(datetime.fromisoformat(date))
        except ValueError:
            pass  # let json_util decide
    decoded = json_util.object_hook(obj, JSON_OPTIONS)
    if isinstance(decoded, dict):
        return decoded  # not an extended JSON type: an ordinary object
    try:
        return to_store_json(decoded, key)
    except InvalidDocument as err:
        raise InvalidDocument(f"extended JSON {key}: {err}") from err


def parse_line(text: str) -> dict[str, Any]:
    """One line of mongoexport output as the store's JSON document (unchecked).

    A line nesting deeper than :data:`~nvsentinel_store.query.MAX_NESTING_DEPTH`
    is refused before it is parsed.
    """
    if json_text_too_deep(text):
        raise InvalidDocument(TOO_DEEP)
    try:
        value = json.loads(text, object_hook=_object_hook, parse_constant=_no_constant)
    except InvalidDocument:
        raise
    except RecursionError:
        raise InvalidDocument(TOO_DEEP) from None
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        stripped = text.strip()
        if stripped in ("[", "]") or stripped.startswith("[{"):
            raise InvalidDocument(
                "not one document per line (exported with --jsonArray? export without it)"
            ) from err
        raise InvalidDocument(f"not valid extended JSON: {err}") from err
    if not isinstance(value, dict):
        raise InvalidDocument(f"a document must be a JSON object, got {type(value).__name__}")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidDocument(f"{name} cannot be stored in JSON")


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def check_document(collection: str, doc: dict[str, Any]) -> str:
    """Check the fields a collection needs; returns the document's id (text), may set ``_id``."""
    if collection == "maintenance_events":
        event_id = doc.get("eventId", doc.get("eventid"))
        if not _non_empty_string(event_id):
            raise InvalidDocument("missing required field eventId (a non-empty string)")
        if doc.get("_id") is None:
            doc["_id"] = event_id
    else:
        he = doc.get("healthevent", doc.get("healthEvent"))
        if not isinstance(he, dict):
            raise InvalidDocument("missing required field healthevent (an object)")
        node = he.get("nodename", he.get("nodeName"))
        if not _non_empty_string(node):
            raise InvalidDocument(
                "missing required field healthevent.nodename (a non-empty string)"
            )
    doc_id = doc.get("_id")
    if doc_id is None:
        raise InvalidDocument(
            "missing _id: without it a second run could not recognise the document"
        )
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise InvalidDocument(f"_id must be a string, ObjectId, UUID or integer, got {doc_id!r}")
    return str(doc_id)


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dump(doc: dict[str, Any]) -> str:
    """The document as compact JSON text; refuses a NUL character PostgreSQL cannot store."""
    text = _ENCODER.encode(doc)
    if "\\u0000" in text and contains_nul(doc):
        raise InvalidDocument("a string holds a NUL character, which PostgreSQL cannot store")
    return text
