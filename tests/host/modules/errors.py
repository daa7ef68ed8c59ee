"""Error reporting: the host prints tracebacks and carries on."""

import traceback

reported: list[tuple[str, BaseException | None]] = []


def report(message, *, exc_info=False):
    error = None
    if exc_info:
        import sys

        error = sys.exc_info()[1]
        traceback.print_exc()
    print(f"*** {message}")
    reported.append((message, error))


def print_error_explanation(message):
    print(message)
