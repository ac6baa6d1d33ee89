"""Bearer-token authentication for every RPC but health checks.

One interceptor covers unary and streaming methods alike: it looks at the
call's metadata before the method runs, and answers a bad or missing token
with UNAUTHENTICATED through a handler of the method's own kind.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health

# Load balancers and orchestrators probe health without credentials.
EXEMPT_PREFIX = f"/{health.SERVICE_NAME}/"


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); refuses an empty file."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIX) or self._authorized(details):
            return handler
        return _refusal_like(handler)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        given = next((value for key, value in details.invocation_metadata or () if key == "authorization"), "")
        given_bytes = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(given_bytes, self._expected)  # constant time: no guessing by timing


async def _refuse(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')")


def _refusal_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serialisers as ``handler`` that only refuses."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(_refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
