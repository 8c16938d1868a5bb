"""Errors that mean bad input: the CLI prints them as one line and exits 2."""


class ConfigError(ValueError):
    """A bad trial, suite or command-line setting; the message says what to do."""
