"""The `fundus-search` commands: one module per command family, each with `add_parsers(commands)`
and one handler per command named `<command>_command(args) -> int`.

Command modules import nothing heavy at the top: torch, Ray and Optuna load inside the handlers
that need them, so `fundus-search --help`, `best` and `table` start in about a second (`report` checks the
stored config with the schema, which loads torch).
"""

# The registry: `main` builds the parser from these modules, in this order of the help.
COMMAND_MODULES = ("data", "train", "run", "evaluate", "predict", "export", "query", "report", "jobs", "demo")
