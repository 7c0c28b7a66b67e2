"""The exceptions that reach a user as a one-line message, each with its exit status."""


class UsageError(ValueError):
    """Bad input from the user: a name, a value, a file. The message names the bad value and what is allowed."""


class TrainingDiverged(UsageError):
    """A loss or gradient became inf/NaN and the run stopped (exit code 3): the message names step and epoch."""


class JobFailed(Exception):
    """A job of several worker processes stopped: the message is its cause in one line (the workers said nothing
    themselves), ``status`` the exit status to end with (2 for a usage error, 128+N for signal N)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
