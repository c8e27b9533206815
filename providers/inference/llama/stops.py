"""Stop sequences over streamed text."""

from __future__ import annotations

__all__ = ["StopMatcher"]


class StopMatcher:
    """Holds back text that could be the start of a stop sequence.

    A stop string may arrive split over several tokens ("<|" then "end|>"), so text
    that ends with a prefix of some stop string is not released until the next token
    decides. Released text therefore never contains (part of) a stop string.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence matched)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:k]):
                    keep = k
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False
