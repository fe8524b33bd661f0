"""One root exception for everything the service reports to a user or an operator.

Terminal errors (bad configuration, missing jars, an unreachable broker) end the command with one
clear line and a non-zero exit. Retryable errors (a Delta concurrent-write conflict) are told apart
so a caller can retry them; nothing here is logged-and-ignored.
"""

from __future__ import annotations


class LakehouseError(Exception):
    """Root of every error the service raises on purpose. `hint` says how to mend it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(LakehouseError):
    """A setting, flag, path or file is wrong. Fixed by the user, never retried."""

    exit_code = 2


class SetupError(LakehouseError):
    """The machine is not set up: jars not fetched, Java missing."""

    exit_code = 3


class BrokerError(LakehouseError):
    """Kafka cannot be reached or refused a request."""

    exit_code = 4


class QueryError(LakehouseError):
    """A streaming query failed. Carries the query name and, where known, the batch id."""

    exit_code = 5

    def __init__(
        self, message: str, *, query: str, batch_id: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.query = query
        self.batch_id = batch_id


class RetryableError(LakehouseError):
    """A transient failure (for example a Delta write conflict) that is safe to retry."""


class VerificationFailed(LakehouseError):
    """An oracle found a violation (missing or duplicated rows, books that do not close)."""

    exit_code = 6
