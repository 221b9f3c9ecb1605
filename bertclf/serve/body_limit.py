"""The request-body limit of `bertclf serve` (--max-body-bytes), as pure ASGI middleware: it must refuse a
body before FastAPI reads it, which route-level checks cannot."""
import json


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over max_bytes, by Content-Length before reading anything and by
    counting bytes as they stream in (chunked bodies). The body is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reply(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = (f"request body is larger than {self.max_bytes} bytes (--max-body-bytes); "
                   "send fewer or shorter texts per request")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                return await self._reply(send, 400, "bad Content-Length header")
            if n > self.max_bytes:
                return await self._reply(send, 413, too_big)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._reply(send, 413, too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect as usual

        return await self.app(scope, replay, send)
