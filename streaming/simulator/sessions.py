"""App sessions walking the booking funnel, so user_events carry a realistic conversion curve.

Many sessions are open at once and interleave, as on a real event bus; each step continues
with a fixed probability and otherwise the session ends silently (the user left the app).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FUNNEL: tuple[str, ...] = (
    "app_open",
    "search",
    "view_vehicle",
    "start_booking",
    "payment",
    "end_trip",
    "rating",
)
# Probability of reaching FUNNEL[i + 1] from FUNNEL[i].
CONTINUE = (0.85, 0.70, 0.50, 0.85, 0.95, 0.60)
OPEN_SESSIONS = 64
NEW_SESSION_SHARE = 0.25


@dataclass(slots=True)
class _Session:
    user: int
    session_id: str
    step: int


class SessionFunnel:
    """Open sessions interleaving their steps; ids come from the seeded generator."""

    def __init__(self, rng: np.random.Generator, users: int) -> None:
        self.rng = rng
        self.users = users
        self.open: list[_Session] = []

    def _new_id(self) -> str:
        h = self.rng.integers(0, 256, 16, dtype=np.uint8)
        h[6] = (h[6] & 0x0F) | 0x40
        h[8] = (h[8] & 0x3F) | 0x80
        x = h.tobytes().hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"

    def _next(self) -> tuple[int, str, str]:
        """Advance one session (or open a new one) until some session emits a step."""
        while True:
            if len(self.open) < OPEN_SESSIONS or self.rng.random() < NEW_SESSION_SHARE:
                session = _Session(int(self.rng.integers(self.users)), self._new_id(), 0)
                self.open.append(session)
                return session.user, session.session_id, FUNNEL[0]
            pick = int(self.rng.integers(len(self.open)))
            session = self.open[pick]
            if self.rng.random() >= CONTINUE[session.step]:
                self._close(pick)
                continue
            session.step += 1
            if session.step == len(FUNNEL) - 1:
                self._close(pick)
            return session.user, session.session_id, FUNNEL[session.step]

    def _close(self, pick: int) -> None:
        """O(1) removal: the last open session takes the closed one's slot."""
        self.open[pick] = self.open[-1]
        self.open.pop()

    def next_events(
        self, n: int, props: Callable[[str], dict[str, str]]
    ) -> list[tuple[int, str, str, dict[str, str]]]:
        """`n` funnel steps as (user position, session id, event type, properties)."""
        out = []
        for _ in range(n):
            user, session_id, step = self._next()
            out.append((user, session_id, step, props(step)))
        return out
