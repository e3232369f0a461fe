"""Errors the emulator answers with, in the API's envelope."""

from __future__ import annotations


class ApiError(Exception):
    """An error response: HTTP status, the API's error type, and its message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)
