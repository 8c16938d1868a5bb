"""Helpers shared by subcommands."""

from __future__ import annotations

from bench.errors import ConfigError


class UsageError(ConfigError):
    """Bad command-line input: reported as one line, exit code 2."""


def parse_options(items: list[str] | None) -> dict[str, object]:
    """`--option key=value` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out
