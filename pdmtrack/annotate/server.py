"""The HTTP side of ``pdmtrack annotate``: a FastAPI app over an ``AnnotationSession``.

Safety: every request needs the session's secret token (the URL pdmtrack prints carries it
once; the page then holds it in an HttpOnly, SameSite=Strict cookie), the Host header must
name this server (DNS rebinding) and an Origin header, when sent, must be this server's. No
endpoint takes a path: frames and objects are numbers, checked against the video; the video
comes from the command line. Changes reach every open page through ``/api/events``
(server-sent events), so two tabs stay consistent.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from pdmtrack.annotate.session import MAX_BRUSH_RADIUS, AnnotationSession, Busy
from pdmtrack.errors import InputError
from pdmtrack.tracking.prompts import MAX_OBJECT_ID

TOKEN_HEADER = "x-pdmtrack-token"
ObjectId = Field(ge=1, le=MAX_OBJECT_ID)
Coordinate = Field(allow_inf_nan=False)


class ObjectFields(BaseModel):
    name: str | None = Field(default=None, max_length=100)
    colour: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")


class Click(BaseModel):
    frame: int
    obj_id: int = ObjectId
    x: float = Coordinate
    y: float = Coordinate
    positive: bool = True


class BoxPrompt(BaseModel):
    frame: int
    obj_id: int = ObjectId
    box: tuple[float, float, float, float]


class Stroke(BaseModel):
    frame: int
    obj_id: int = ObjectId
    points: list[tuple[float, float]] = Field(min_length=1, max_length=10_000)
    radius: float = Field(default=8, gt=0, le=MAX_BRUSH_RADIUS, allow_inf_nan=False)
    erase: bool = False


class FrameObject(BaseModel):
    frame: int
    obj_id: int = ObjectId


class TrackRequest(BaseModel):
    direction: Literal["forward", "backward", "both"] = "forward"
    start: int | None = None
    end: int | None = None
    from_frame: int | None = None
    resume: bool = False


class ExportRequest(BaseModel):
    format: str = Field(default="davis", max_length=40)  # checked by the session against EXPORT_FORMATS


def token_cookie(port: int) -> str:
    """The token's cookie: one per port (browsers share cookies across a host's ports)."""
    return f"pdmtrack_token_{port}"


def host_name(value: str) -> str:
    """A Host header's or an Origin's host name, without the port ('[::1]:8765' -> '::1')."""
    return (urlsplit(value if "//" in value else f"//{value}").hostname or "").lower()


def create_app(session: AnnotationSession, token: str, hosts: set[str], port: int) -> FastAPI:
    """The app serving ``session`` on ``port``; ``hosts``: the host names (any port: an SSH
    tunnel may forward another local port) under which the browser may reach this server."""
    app = FastAPI(title="pdmtrack annotate", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("pdmtrack.annotate") / "static"
    cookie = token_cookie(port)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        if host_name(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"error": "unknown Host header: open the address pdmtrack printed"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and host_name(origin) not in hosts:
            return JSONResponse({"error": f"requests from {origin} are refused"}, status_code=403)
        given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER) or request.cookies.get(cookie) or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse(
                {"error": "missing or wrong token: open the address pdmtrack printed (it carries the token)"}, status_code=403
            )
        if request.query_params.get("token") and request.url.path == "/":
            response: Response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
        else:
            response = await call_next(request)
        response.set_cookie(cookie, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=409 if isinstance(err, Busy) else 400)

    @app.get("/")
    def index() -> FileResponse:
        with resources.as_file(static / "index.html") as page:
            return FileResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/state")
    def state() -> dict:
        return session.summary()

    @app.get("/api/frames/{frame}.jpg")
    def frame_image(frame: int) -> Response:
        return Response(session.frame_jpeg(frame), media_type="image/jpeg")

    @app.get("/api/labels/{frame}.png")
    def labels(frame: int) -> Response:
        """The frame's labels as a greyscale PNG, pixel value = object id (the page colours them)."""
        image = Image.fromarray(session.labels(frame), mode="L")
        return Response(_encode(image, "PNG"), media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/api/objects")
    def add_object(fields: ObjectFields) -> dict:
        return {"obj_id": session.add_object(fields.name or "", fields.colour or "")}

    @app.patch("/api/objects/{obj_id}")
    def update_object(obj_id: int, fields: ObjectFields) -> dict:
        session.update_object(obj_id, fields.name, fields.colour)
        return {"ok": True}

    @app.delete("/api/objects/{obj_id}")
    def remove_object(obj_id: int, from_frame: int | None = None) -> dict:
        session.remove_object(obj_id, from_frame)
        return {"ok": True}

    @app.post("/api/click")
    def click(prompt: Click) -> dict:
        return _frame_reply(session, prompt.frame, session.click(prompt.frame, prompt.obj_id, prompt.x, prompt.y, prompt.positive))

    @app.post("/api/box")
    def box(prompt: BoxPrompt) -> dict:
        return _frame_reply(session, prompt.frame, session.box(prompt.frame, prompt.obj_id, prompt.box))

    @app.post("/api/brush")
    def brush(stroke: Stroke) -> dict:
        labels = session.brush(stroke.frame, stroke.obj_id, stroke.points, stroke.radius, stroke.erase)
        return _frame_reply(session, stroke.frame, labels)

    @app.post("/api/clear")
    def clear(target: FrameObject) -> dict:
        return _frame_reply(session, target.frame, session.clear(target.frame, target.obj_id))

    @app.post("/api/undo")
    def undo() -> dict:
        return {"frame": session.undo()}

    @app.post("/api/redo")
    def redo() -> dict:
        return {"frame": session.redo()}

    @app.post("/api/track")
    def track(request: TrackRequest) -> dict:
        job = session.track(request.direction, request.start, request.end, request.from_frame, request.resume)
        return {"total": job.total}

    @app.post("/api/cancel")
    def cancel() -> dict:
        session.cancel()
        return {"ok": True}

    @app.post("/api/export")
    def export(request: ExportRequest) -> dict:
        return {"folder": str(session.export(request.format))}

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(_event_stream(session, request), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _frame_reply(session: AnnotationSession, frame: int, labels: np.ndarray) -> dict:
    """What an edit answers: the frame, its version and the ids now in it."""
    return {"frame": frame, "version": session.frame_versions.get(frame, 0), "objects": [int(i) for i in np.unique(labels) if i]}


async def _event_stream(session: AnnotationSession, request: Request) -> AsyncIterator[str]:
    """Server-sent events: every change of ``session``, as JSON, until the page goes away."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict] = asyncio.Queue()

    def listener(event: dict) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    session.listeners.append(listener)
    try:
        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            try:
                event = await asyncio.wait_for(queue.get(), timeout=15)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"data: {json.dumps(event)}\n\n"
    finally:
        session.listeners.remove(listener)


def _encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()
