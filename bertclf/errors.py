"""The error contract: bad input raises UserError; the CLI prints its one line and exits 2, no traceback."""


class UserError(Exception):
    """Something the user can fix. The message is one line: what is wrong (file, line, field) and what to do."""

    exit_code = 2
    prefix = "error: "  # the CLI's line is "bertclf: error: ..."

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
