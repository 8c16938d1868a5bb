"""One module per `noharm` subcommand; each exposes `add_parser(subparsers)`.

A new subcommand is a new module here plus its name in `COMMANDS`.
"""

COMMANDS = ("trial", "datasets", "methods", "bench", "stress", "run", "report")
