"""Where a baseline comes from and where it departs from it, declared once on the method class.

`reference` names the reference implementation that was read; `departures`
lists every known difference from the paper and that code, each with its
reason. `noharm methods list -v` shows both (the CLI prints the `paper` entry of
`Method.summary()`, so they are folded into it, one indented line each), and
docs/baselines.md collects them in one table (a test keeps it in step).
"""

from __future__ import annotations

from typing import Any, ClassVar

# The indentation of the CLI's per-method lines, so the folded lines line up with "paper:".
CLI_INDENT = "\n    "


class Provenance:
    """Mixin for a `Method`: declares the reference code read and the known departures."""

    reference: ClassVar[str] = ""
    departures: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def summary(cls) -> dict[str, Any]:
        info = super().summary()  # type: ignore[misc]
        info["reference"] = cls.reference
        info["departures"] = list(cls.departures)
        extra = ([f"reference code read: {cls.reference}"] if cls.reference else []) + \
            [f"departure: {d}" for d in cls.departures]
        if extra:
            info["paper"] = CLI_INDENT.join([info["paper"], *extra])
        return info
