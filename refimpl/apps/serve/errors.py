"""API errors, with TEI's status codes and bodies.

TEI (router/src/lib.rs, http/server.rs) answers ``{"error": ..., "error_type": ...}`` with
error_type one of Unhealthy (503), Backend (424), Overloaded (429), Validation (422),
Tokenizer (422), Empty (400); its OpenAI route answers ``{"message", "code", "type"}``
with the same names. TEI documents 413 for "Batch size error" (error_type Validation);
this server uses 413 for every "too large" refusal (too many inputs, an input over
max_seq_length tokens or over the character bound, a body over --payload-limit).
"""

from __future__ import annotations

OPENAI_ROUTES = ("/v1/embeddings", "/embeddings")


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, metric: str | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.metric = metric or error_type.lower()  # te_request_failure{err=...}

    def body(self, path: str) -> dict:
        if path in OPENAI_ROUTES:
            return {"message": self.message, "code": self.status, "type": self.error_type}
        return {"error": self.message, "error_type": self.error_type}


def validation(message: str) -> ApiError:
    return ApiError(422, "Validation", message)


def empty(field: str) -> ApiError:
    return ApiError(400, "Empty", f"`{field}` cannot be empty")


def too_large(message: str, metric: str = "validation") -> ApiError:
    return ApiError(413, "Validation", message, metric)


def overloaded() -> ApiError:
    return ApiError(429, "Overloaded", "Model is overloaded")


def unhealthy() -> ApiError:
    return ApiError(503, "Unhealthy", "unhealthy")


def backend(message: str) -> ApiError:
    return ApiError(424, "Backend", f"Backend error: {message}")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "missing or wrong API key: send `Authorization: Bearer <key>`")
