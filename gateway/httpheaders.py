"""What every HTTP listener of ours (portal, status API) answers the same way: a ``Server``
header that names no software version, also on error answers and on paths that do not exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

SERVER = "Mailward"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def server_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["Server"] = SERVER
        raise
    response.headers["Server"] = SERVER
    return response
