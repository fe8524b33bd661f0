"""PII masking: emails and phone numbers never reach Silver in clear.

Each PII column `c` becomes `c_token` (HMAC-SHA256 of the normalised value under a secret key:
a stable join token that cannot be reversed or recomputed without the key) and `c_masked` (a
display form: `j*******@example.com`, `*******4567`). The HMAC is computed with Spark's own
SHA-256 (RFC 2104: H(K^opad || H(K^ipad || m))). The key-derived pads travel in a one-row
broadcast frame, never as literals in a plan, so the key cannot surface in logs or plans.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from streaming.settings import Secret

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_BLOCK = 64
_IPAD, _OPAD = "_pii_ipad", "_pii_opad"


def hmac_pads(key: Secret) -> tuple[bytes, bytes]:
    raw = key.reveal().encode()
    if len(raw) > _BLOCK:
        raw = hashlib.sha256(raw).digest()
    raw = raw.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in raw), bytes(b ^ 0x5C for b in raw)


def pads_frame(spark: SparkSession, key: Secret) -> DataFrame:
    ipad, opad = hmac_pads(key)
    return spark.createDataFrame([(ipad, opad)], f"{_IPAD} BINARY, {_OPAD} BINARY")


def _hmac(message: Column) -> Column:
    inner = F.unhex(F.sha2(F.concat(F.col(_IPAD), message.cast("binary")), 256))
    return F.sha2(F.concat(F.col(_OPAD), inner), 256)


def normalise(kind: str, value: Column) -> Column:
    """The form that is hashed: emails lower-cased and trimmed, phones reduced to digits."""
    if kind == "phone":
        return F.regexp_replace(value, r"[^0-9]", "")
    return F.lower(F.trim(value))


def mask(kind: str, value: Column) -> Column:
    if kind == "phone":
        digits = normalise("phone", value)
        return F.concat(F.repeat(F.lit("*"), F.greatest(F.length(digits) - 4, F.lit(0))),
                        F.substring(digits, -4, 4))  # fmt: skip
    value = normalise("email", value)
    local = F.substring_index(value, "@", 1)
    domain = F.substring_index(value, "@", -1)
    return F.when(
        F.instr(value, "@") > 0,
        F.concat(F.substring(local, 1, 1), F.repeat(F.lit("*"), F.greatest(F.length(local) - 1,
                 F.lit(1))), F.lit("@"), domain),
    ).otherwise(F.repeat(F.lit("*"), F.length(value)))  # fmt: skip


def mask_pii(frame: DataFrame, columns: tuple[str, ...], pads: DataFrame) -> DataFrame:
    """Replace each PII column by `<column>_token` and `<column>_masked`."""
    if not columns:
        return frame
    joined = frame.crossJoin(F.broadcast(pads))
    replaced = {}
    for column in columns:
        kind = "phone" if "phone" in column else "email"
        value = F.col(column)
        replaced[f"{column}_token"] = F.when(value.isNotNull(), _hmac(normalise(kind, value)))
        replaced[f"{column}_masked"] = F.when(value.isNotNull(), mask(kind, value))
    return joined.withColumns(replaced).drop(*columns, _IPAD, _OPAD)


def token(key: Secret, kind: str, value: str) -> str:
    """The token Silver stores for `value` (`<column>_token`), computed in Python: HMAC-SHA256
    of the normalised value, hex."""
    import hmac
    import re

    normal = re.sub(r"[^0-9]", "", value) if kind == "phone" else value.strip().lower()
    return hmac.new(key.reveal().encode(), normal.encode(), hashlib.sha256).hexdigest()
