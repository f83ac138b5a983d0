"""Bearer-token check for every route but ``/healthz``, when a token is set.

It runs as ASGI middleware, before routing and before the body is read, so
an unauthenticated caller learns nothing about routes, ids or validation.
The comparison is ``hmac.compare_digest``, in time independent of where the
two tokens first differ.
"""

from __future__ import annotations

import hmac

from fastapi.security import HTTPBearer
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api_stub.errors import error_response

OPEN_PATHS = frozenset({"/healthz"})
# The operator page checks the token itself (api_stub.ui): a browser cannot
# add a header to a page it navigates to, so the page signs in once instead.
SELF_CHECKED_PREFIX = "/ui"

# Declares the scheme in the OpenAPI document; the middleware does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="ARTIFACTD_API_TOKEN")


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self._token = token.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        self_checked = path == SELF_CHECKED_PREFIX or path.startswith(
            SELF_CHECKED_PREFIX + "/"
        )
        if scope["type"] != "http" or path in OPEN_PATHS or self_checked:
            await self.app(scope, receive, send)
            return

        if not self._authorized(Headers(scope=scope).get("authorization", "")):
            response = error_response(
                401,
                "UNAUTHORIZED",
                "send Authorization: Bearer <ARTIFACTD_API_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="artifactd"'},
            )
            await response(scope, receive, send)
            return

        await self.app(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        given = credentials.strip().encode("utf-8", "replace")
        # Compare even when the scheme is wrong, so both paths take alike.
        same = hmac.compare_digest(given, self._token)
        return scheme.lower() == "bearer" and same
