"""The one project exception type for user errors.

A ``BenchError`` message says what is wrong and how to fix it, on one line. The CLI prints it
without a traceback and exits with code 2. Anything else that escapes is a bug in sampler_bench.
"""


class BenchError(Exception):
    """A user error: bad input, missing file, impossible request. Message = problem + fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


def did_you_mean(word: str, choices) -> str:
    """``"did you mean a, b? "`` with up to three close matches of ``word`` among ``choices``, or
    ``""``: the hint an "unknown NAME" error puts before its fix."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""
