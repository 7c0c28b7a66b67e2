"""The one exception type that reaches a user as a one-line message (exit code 2)."""


class UsageError(ValueError):
    """Bad input from the user: a name, a value, a file. The message names the bad value and what is allowed."""
