"""PII masking: Spark HMAC tokens equal Python's, masks hide, and the key never shows in a plan."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import re

import pytest
from pyspark.sql import SparkSession

from streaming.config import Config, load_config
from streaming.errors import ConfigError
from streaming.pii import hmac_pads, mask_pii, pads_frame
from streaming.settings import Secret

KEY = "unit-test-pii-key-7f3c9a1e5b"
LONG_KEY = "long-pii-key-" + "0123456789abcdef" * 6  # 109 bytes: longer than one SHA-256 block
SCHEMA = "id INT, email STRING, phone STRING"


def reference_token(key: str, normalised: str) -> str:
    return hmac.new(key.encode(), normalised.encode(), hashlib.sha256).hexdigest()


def normalise_email(value: str) -> str:
    return value.strip(" ").lower()


def normalise_phone(value: str) -> str:
    return re.sub(r"[^0-9]", "", value)


ROWS = [
    (1, "john.doe@example.com", "+1 (555) 010-0147"),
    (2, " John.Doe@Example.com ", "15550100147"),
    (3, "a@b.io", "555-0100"),
    (4, "Zoë.Ünïcode@Exämple.org", "+44 20 7946 0958"),
    (5, None, None),
    (6, "no-at-sign", "12"),
]


def masked(spark: SparkSession, key: str, rows=ROWS):
    frame = spark.createDataFrame(rows, SCHEMA)
    return mask_pii(frame, ("email", "phone"), pads_frame(spark, Secret(key)))


@pytest.fixture(scope="module")
def masked_rows(spark: SparkSession):
    return {row.id: row for row in masked(spark, KEY).collect()}


def test_columns_are_replaced_by_token_and_mask(spark: SparkSession) -> None:
    frame = masked(spark, KEY)
    assert frame.columns == [
        "id", "email_token", "email_masked", "phone_token", "phone_masked",
    ]  # fmt: skip
    assert all(not name.startswith("_pii") for name in frame.columns)


@pytest.mark.parametrize(
    "key", [KEY, LONG_KEY, "k" * 64, "k" * 65], ids=["short", "long", "64", "65"]
)
def test_spark_token_equals_python_hmac(spark: SparkSession, key: str) -> None:
    rows = {row.id: row for row in masked(spark, key).collect()}
    for id_, email, phone in ROWS:
        if email is None:
            continue
        assert rows[id_].email_token == reference_token(key, normalise_email(email)), email
        assert rows[id_].phone_token == reference_token(key, normalise_phone(phone or "")), phone


def test_normalisation_makes_one_person_one_token(masked_rows) -> None:
    assert masked_rows[1].email_token == masked_rows[2].email_token
    assert masked_rows[1].phone_token == masked_rows[2].phone_token
    assert masked_rows[1].email_token == reference_token(KEY, "john.doe@example.com")
    assert masked_rows[1].phone_token == reference_token(KEY, "15550100147")
    assert masked_rows[1].email_token != masked_rows[3].email_token
    assert re.fullmatch(r"[0-9a-f]{64}", masked_rows[1].email_token)


def test_tokens_change_with_the_key(spark: SparkSession, masked_rows) -> None:
    other = {row.id: row for row in masked(spark, LONG_KEY).collect()}
    assert other[1].email_token != masked_rows[1].email_token
    assert other[1].phone_token != masked_rows[1].phone_token


def test_masked_forms(masked_rows) -> None:
    forms = {i: (row.email_masked, row.phone_masked) for i, row in masked_rows.items()}
    assert forms == {
        1: ("j*******@example.com", "*******0147"),
        2: ("j*******@example.com", "*******0147"),
        3: ("a*@b.io", "***0100"),
        4: ("z**********@exämple.org", "********0958"),
        5: (None, None),
        6: ("**********", "12"),
    }


def test_nulls_stay_null(masked_rows) -> None:
    row = masked_rows[5]
    assert (row.email_token, row.email_masked, row.phone_token, row.phone_masked) == (
        None, None, None, None,
    )  # fmt: skip


def test_no_columns_is_the_same_frame(spark: SparkSession) -> None:
    frame = spark.createDataFrame(ROWS, SCHEMA)
    assert mask_pii(frame, (), pads_frame(spark, Secret(KEY))) is frame


def test_pads_follow_rfc_2104() -> None:
    ipad, opad = hmac_pads(Secret("key"))
    assert len(ipad) == len(opad) == 64
    assert ipad == bytes(b ^ 0x36 for b in b"key".ljust(64, b"\0"))
    assert opad == bytes(b ^ 0x5C for b in b"key".ljust(64, b"\0"))
    long_ipad, _ = hmac_pads(Secret(LONG_KEY))
    digest = hashlib.sha256(LONG_KEY.encode()).digest().ljust(64, b"\0")
    assert long_ipad == bytes(b ^ 0x36 for b in digest)


def _secrets(key: str) -> list[str]:
    ipad, opad = hmac_pads(Secret(key))
    forms = [key, key.encode().hex()]
    for pad in (ipad, opad):
        forms += [pad.hex(), pad.hex().upper(), pad.hex()[:32], pad.hex().upper()[:32]]
    return forms


@pytest.mark.parametrize("key", [KEY, LONG_KEY], ids=["short", "long"])
def test_key_never_appears_in_a_plan(spark: SparkSession, key: str) -> None:
    frame = masked(spark, key)
    plan = frame._jdf.queryExecution().toString()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        frame.explain(mode="extended")
        frame.explain(mode="formatted")
        frame.explain(mode="codegen")
    texts = {"queryExecution": plan, "explain": captured.getvalue()}
    assert "LocalTableScan" in plan or "Scan" in plan  # the plan was really rendered
    for where, text in texts.items():
        for secret in _secrets(key):
            assert secret.lower() not in text.lower(), (where, secret)


def _config(**env: str) -> Config:
    return load_config({"LAKEHOUSE_ROOT": "/tmp/lake-unused", **env})


@pytest.mark.parametrize(
    "value", [None, "", "Q", "Fifteen-Chars!!"], ids=["unset", "empty", "1", "15"]
)
def test_require_pii_key_refuses_missing_or_short_keys(value: str | None) -> None:
    config = _config(**({} if value is None else {"LAKEHOUSE_PII_KEY": value}))
    with pytest.raises(ConfigError) as caught:
        config.require_pii_key()
    assert "LAKEHOUSE_PII_KEY" in str(caught.value)
    assert caught.value.exit_code == 2
    if value:
        assert value not in str(caught.value)


def test_require_pii_key_accepts_sixteen_characters() -> None:
    key = _config(LAKEHOUSE_PII_KEY="sixteen-chars-ok").require_pii_key()
    assert isinstance(key, Secret)
    assert key.reveal() == "sixteen-chars-ok"


def test_secret_never_shows() -> None:
    value = "x" * 20
    secret = Secret(value)
    assert value not in repr(secret)
    assert value not in str(secret)
    assert value not in f"{secret}"
    assert value not in repr(_config(LAKEHOUSE_PII_KEY=value))
    assert secret.reveal() == value
