"""The one exception type that reaches a user as a one-line message (exit code 2)."""


class UsageError(ValueError):
    """Bad input from the user: a name, a value, a file. The message names the bad value and what is allowed."""


class TrainingDiverged(UsageError):
    """A loss or gradient became inf/NaN and the run stopped (exit code 3): the message names step and epoch."""
