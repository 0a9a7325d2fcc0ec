"""Errors as the API answers them: JSON ``{"message", "field"}``, one line each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

__all__ = ["ApiError", "ErrorBody", "error_response", "responses"]


class ErrorBody(BaseModel):
    """Every error response: one line naming what was wrong (and, for 422, the field)."""

    message: str
    field: str | None = None


class ApiError(HTTPException):
    """An answer other than 2xx, with the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.field = field


def error_response(status: int, message: str, field: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(message=message, field=field).model_dump(), status_code=status,
                        headers=dict(headers) if headers else None)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "no or unknown token", 403: "read-only token or server", 404: "not found",
            409: "conflict with the stored state", 413: "request body too large", 422: "invalid input",
            503: "database unreachable"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}

