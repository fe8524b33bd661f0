"""Decoding Bronze payloads into typed rows, per message: JSON or Confluent-framed Avro.

Input: Bronze rows (raw `value` bytes + Kafka coordinates). Output: the same rows with one typed
column per contract field, `_format` (json | avro), `_schema_id`, and `_rejection`: null for a
row that decoded, else struct(stage, rule_ids, reason). Stages here are `decode` (the bytes are
not a message: empty, oversized, not UTF-8 or an escaped lone surrogate, not JSON, more JSON
after the message, not an object, unknown frame, Avro body that does not fit its schema) and
`schema` (a message of the wrong shape: unknown schema id, a field of the wrong type, a number
that is not finite). Nothing is dropped: a rejected row keeps its raw bytes, an oversized one
its first `max_message_bytes` of them (Bronze holds it whole; a batch must not carry a ten
megabyte payload through every frame it holds and into quarantine).

JSON goes through Spark's VARIANT type, which keeps each token's JSON type, so `"battery": "high"`
or `"session_id": 12345` is a wrong type rather than a silent cast. No per-row Python.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from streaming.contracts import Contract
from streaming.schemas import MessageSchema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_NUMBER_KINDS = ("BIGINT", "INT", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT", "DECIMAL")
_INTEGER_KINDS = ("BIGINT", "INT", "SMALLINT", "TINYINT")


def _rejection(stage: str, rule_id: str, reason: Column | str) -> Column:
    reason_col = F.lit(reason) if isinstance(reason, str) else reason
    return F.struct(
        F.lit(stage).alias("stage"),
        F.array(F.lit(rule_id)).alias("rule_ids"),
        reason_col.alias("reason"),
    )


def decode(bronze: DataFrame, contract: Contract) -> DataFrame:
    """Bronze rows -> typed rows with `_rejection` (null when the message decoded)."""
    value = F.col("value")
    first_byte = F.when(F.length(value) > 0, F.hex(F.substring(value, 1, 1)))
    text = value.cast("string")
    # JSON is parsed inside brackets: Spark's parser stops after the first value, so the text
    # `{...} {...}` (two messages run together) would pass as the first one. In brackets a
    # second value is a second element, or a parse error.
    # An oversized payload is rejected by its length alone: parsing ten megabytes of text (and
    # holding the parsed copy) for it starved a batch's memory.
    limit = contract.max_message_bytes
    fits = F.length(value) <= limit
    wrapped = bronze.withColumn(
        "_wrapped",
        F.when(
            (first_byte != "00") & fits,
            F.try_parse_json(F.concat(F.lit("["), text, F.lit("]"))),
        ),
    )
    framed = wrapped.withColumns(
        {
            "_first_byte": first_byte,
            "_format": F.when(first_byte == "00", F.lit("avro")).otherwise(F.lit("json")),
            "_schema_id": F.when(
                (first_byte == "00") & (F.length(value) >= 5),
                F.conv(F.hex(F.substring(value, 2, 4)), 16, 10).cast("int"),
            ),
            "_variant": F.try_variant_get("_wrapped", "$[0]", "variant"),
            "_trailing": F.try_variant_get("_wrapped", "$[1]", "variant").isNotNull(),
            **{
                _avro_column(version): F.when(
                    (first_byte == "00") & fits,
                    _from_avro(F.expr("substring(value, 6)"), version),
                )
                for version in contract.versions
            },
        }
    )
    # Each field's JSON token and its JSON type are columns of their own, computed once per row:
    # as inline expressions they would be evaluated again in every check that reads them.
    fields = contract.fields
    tokens = framed.withColumns(
        {_token(name): F.try_variant_get("_variant", f"$.{name}", "variant") for name in fields}
    ).withColumns({_kind(name): F.schema_of_variant(_token(name)) for name in fields})
    typed = tokens.withColumns(
        {
            name: F.when(
                F.col("_format") == "avro", _avro_field(contract, name, data_type)
            ).otherwise(F.try_variant_get(_token(name), "$", data_type.simpleString()))
            for name, (data_type, _) in fields.items()
        }
    )
    rejection = _frame_rejection(value, text, contract)
    for name, (data_type, _) in fields.items():
        rejection = rejection.when(
            (F.col("_format") == "json") & _json_wrong_type(name, data_type),
            _rejection(
                "schema", "schema.wrong_type", f"field '{name}' is not a {data_type.simpleString()}"
            ),
        )
    for name, (data_type, _) in fields.items():
        if isinstance(data_type, (T.DoubleType, T.FloatType)):
            # 1e400 reads as infinity, and Avro carries NaN: no number a reading can have.
            value = F.col(name)
            rejection = rejection.when(
                F.isnan(value) | (F.abs(value) == F.lit(float("inf"))),
                _rejection("schema", "schema.not_finite", f"field '{name}' is not a finite number"),
            )
    return typed.withColumns(
        {
            "_rejection": rejection,
            "value": F.when(fits, F.col("value")).otherwise(F.substring("value", 1, limit)),
        }
    ).drop(
        "_wrapped",
        "_trailing",
        "_variant",
        "_first_byte",
        *(_avro_column(v) for v in contract.versions),
        *(_token(name) for name in fields),
        *(_kind(name) for name in fields),
    )


def _token(name: str) -> str:
    return f"_json_token_{name}"


def _kind(name: str) -> str:
    return f"_json_kind_{name}"


def _avro_column(version: MessageSchema) -> str:
    return f"_avro_{version.schema_id}"


def _avro_field(contract: Contract, name: str, data_type: T.DataType) -> Column:
    """The field as decoded by the payload's own schema version (null where it lacks it)."""
    expression = None
    for version in contract.versions:
        if name not in version.field_names:
            continue
        value = F.col(_avro_column(version)).getField(name).cast(data_type)
        matches = F.col("_schema_id") == version.schema_id
        expression = (
            F.when(matches, value) if expression is None else expression.when(matches, value)
        )
    return expression if expression is not None else F.lit(None).cast(data_type)


def _frame_rejection(value: Column, text: Column, contract: Contract) -> Column:
    """The first thing wrong with the bytes themselves, in the order a reader finds it."""
    size = F.length(value)
    limit = contract.max_message_bytes
    avro = F.col("_format") == "avro"
    return (
        F.when(value.isNull() | (size == 0), _rejection("decode", "decode.empty", "empty value"))
        .when(
            size > limit,
            _rejection(
                "decode",
                "decode.oversized",
                F.format_string(
                    f"%d bytes > {limit} (quarantine keeps the first {limit}, Bronze all)", size
                ),
            ),
        )
        .when(
            avro & F.col("_schema_id").isNull(),
            _rejection("decode", "decode.bad_avro_frame", "Avro frame shorter than 5 bytes"),
        )
        .when(
            avro & ~F.col("_schema_id").isin(*(v.schema_id for v in contract.versions)),
            _rejection(
                "schema",
                "schema.unknown_schema_id",
                F.format_string("unknown schema id %d", F.col("_schema_id")),
            ),
        )
        .when(
            avro & _avro_failed(contract),
            _rejection(
                "decode",
                "decode.avro_body",
                f"Avro body does not match schema id {contract.schema.schema_id}",
            ),
        )
        .when(
            ~avro & F.col("_first_byte").isin(*_CONTROL_BYTES),
            _rejection(
                "decode",
                "decode.unknown_format",
                F.format_string("unknown frame (first byte 0x%s)", F.col("_first_byte")),
            ),
        )
        .when(~avro & ~F.is_valid_utf8(text), _rejection("decode", "decode.not_utf8", "not UTF-8"))
        .when(
            # An escaped UTF-16 surrogate without its pair decodes to no character at all.
            ~avro & (F.instr(text, "\\u") > 0) & text.rlike(_LONE_SURROGATE),
            _rejection("decode", "decode.not_utf8", "an escaped lone UTF-16 surrogate"),
        )
        .when(
            ~avro & F.col("_trailing"),
            _rejection("decode", "decode.trailing_data", "more JSON after the message"),
        )
        .when(
            ~avro & F.col("_variant").isNull(), _rejection("decode", "decode.not_json", "not JSON")
        )
        .when(
            # Parsed JSON whose first token opens an object is an object: one look at the text,
            # rather than the variant's schema rendered as a string for every row.
            ~avro & ~text.rlike(r"^[ \t\n\r]*\{"),
            _rejection("decode", "decode.not_an_object", "JSON value is not an object"),
        )
    )


_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = f"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}"
# Bytes that never start a JSON text: a binary frame with a magic byte this service does not know.
_CONTROL_BYTES = [f"{b:02X}" for b in range(1, 32) if b not in (9, 10, 13)]


def _json_wrong_type(name: str, data_type: T.DataType) -> Column:
    """True where the JSON token of `name` is present, not null, and of the wrong JSON type.

    Reads the token's kind (`_kind`) and, for timestamps and maps, the typed value already cast
    from it (the JSON branch of the field's column, since only JSON rows are judged here)."""
    kind = F.col(_kind(name))
    present = kind.isNotNull() & (kind != "VOID")
    if isinstance(data_type, T.StringType):
        ok = kind == "STRING"
    elif isinstance(data_type, T.TimestampType):
        ok = (kind == "STRING") & F.col(name).isNotNull()
    elif isinstance(data_type, (T.IntegerType, T.LongType)):
        ok = kind.isin(*_INTEGER_KINDS)
    elif isinstance(data_type, (T.DoubleType, T.FloatType)):
        ok = F.startswith(kind, F.lit("DECIMAL")) | kind.isin(*_NUMBER_KINDS)
    elif isinstance(data_type, T.BooleanType):
        ok = kind == "BOOLEAN"
    else:  # maps: an object whose values cast to the declared value type
        ok = F.startswith(kind, F.lit("OBJECT")) & F.col(name).isNotNull()
    return present & ~ok


def _avro_failed(contract: Contract) -> Column:
    """from_avro in PERMISSIVE mode yields nulls for a body that does not fit: all fields null."""
    scalars = [
        _avro_field(contract, name, data_type).cast("string")
        for name, (data_type, _) in contract.fields.items()
        if not isinstance(data_type, T.MapType)
    ]
    return F.coalesce(*scalars).isNull()


def _from_avro(body: Column, version: MessageSchema) -> Column:
    from pyspark.sql.avro.functions import from_avro

    return from_avro(body, json.dumps(version.raw), {"mode": "PERMISSIVE"})
