"""Errors caused by what a user or API caller sent, as opposed to failures of our own."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input: the message says what was wrong and what to do.

    ``status_code`` is an *instance* attribute because that is where the WebUI's API error
    handler looks (``vars(error).get("status_code", 500)``): a script raising this over
    /sdapi/v1/img2img answers 4xx instead of 500.
    """

    default_status = 422

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code or self.default_status
