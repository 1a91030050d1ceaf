"""The two kinds of failure the CLI reports: bad input (exit 2) and runtime failure (exit 1)."""


class BadInput(Exception):
    """The user asked for something that cannot be run; the message is one sentence naming the fix."""

    exit_code = 2


class RuntimeFailure(Exception):
    """Something failed while running (a trial, a model that cannot load); exit code 1."""

    exit_code = 1
