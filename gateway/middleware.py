"""HTTP middlewares: request ids, and errors always in the OpenAI shape.

Nothing leaves the gateway as an HTML error page or a stack trace: aiohttp's own
HTTP exceptions (404, 405, 413, ...) are rewritten, and an unexpected exception becomes a
generic 500 whose body names only the request id, while the details go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from random import getrandbits

from aiohttp import web

from .errors import GatewayError

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
MAX_BODY_BYTES: web.AppKey[int] = web.AppKey("max_body_bytes", int)
_MAX_CLIENT_REQUEST_ID = 128


def request_id_for(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given and len(given) <= _MAX_CLIENT_REQUEST_ID and given.isprintable():
        return given
    # An id, not a secret: the seeded PRNG (re-seeded in every forked worker) instead of
    # os.urandom, a system call per request.
    return f"req_{getrandbits(96):024x}"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_for(request)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except GatewayError as error:
        return error.response({REQUEST_ID_HEADER: request_id})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc).response({REQUEST_ID_HEADER: request_id})
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        return GatewayError(
            500,
            f"The gateway failed to handle this request (request id {request_id}). This is a bug; it has been logged.",
            code="internal_error",
            type="api_error",
        ).response({REQUEST_ID_HEADER: request_id})
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return GatewayError(404, f"Unknown path: {request.method} {request.path}.", code="unknown_url")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return GatewayError(
            405,
            f"Method {request.method} is not allowed on {request.path}; allowed: {allowed}.",
            code="method_not_allowed",
            headers={"Allow": allowed} if allowed else None,
        )
    if exc.status == 413:
        limit = request.app.get(MAX_BODY_BYTES)
        detail = f" of {limit} bytes" if limit else ""
        return GatewayError(413, f"The request body exceeds the gateway's size limit{detail}.", code="request_too_large")
    return GatewayError(exc.status, exc.reason or "Request rejected.", code="http_error")
