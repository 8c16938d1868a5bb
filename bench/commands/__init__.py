"""One module per `noharm` subcommand; each exposes `add_parser(subparsers)`.

A new subcommand is a new module here plus its name in `COMMANDS`. `noharm` imports every command module
to build its parser, so a command module imports its heavy dependencies (torch, Ray, MLflow, the
library modules that pull them) inside `run`: `noharm --help` and the light commands start in a fraction
of a second.
"""

COMMANDS = ("trial", "datasets", "methods", "bench", "stress", "run", "report")
