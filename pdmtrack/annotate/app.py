"""``pdmtrack annotate``'s start: check the inputs, bind the port, load the tracker, serve.

Inputs are checked and the port is taken before any model loads, so a missing video, a
project of another video or a busy port is one line at once. The page's address carries a
fresh secret token, as Jupyter's does.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import webbrowser
from pathlib import Path

from pdmtrack.annotate.project import Project
from pdmtrack.annotate.server import create_app
from pdmtrack.annotate.session import AnnotationSession
from pdmtrack.config import TrackSettings
from pdmtrack.errors import ParameterError
from pdmtrack.tracking.tracker import Tracker

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def default_project(video: str | Path) -> Path:
    """Where a video's project goes when no --project is given."""
    return Path("pdmtrack_annotate") / Path(video).stem


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (ParameterError naming the port when it is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise ParameterError(
            "port", f"cannot listen on {host}:{port} ({err.strerror}): is another server using it? choose another --port"
        ) from None
    sock.listen(64)
    return sock


def allowed_hosts(host: str) -> set[str]:
    """The host names under which a browser may reach this server: loopback, ``host``, and
    for another ``host`` this machine's names and addresses (a Host header naming anything
    else is a DNS-rebinding attempt)."""
    names = {"127.0.0.1", "localhost", "::1", host.strip("[]")}
    if host not in LOOPBACK:
        hostname = socket.gethostname()
        names |= {hostname, socket.getfqdn()}
        with contextlib.suppress(OSError):
            names |= set(socket.gethostbyname_ex(hostname)[2])
    return {name.lower() for name in names}


def serve(
    video: str | Path | None,
    project: str | Path | None,
    settings: TrackSettings,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
) -> None:
    """Open (or start) the project, load the tracker and serve the app until interrupted."""
    import uvicorn

    if video is None and project is None:
        raise ParameterError("video", "give a VIDEO (a new project) or --project DIR (reopen one)")
    if not 1 <= port <= 65535:
        raise ParameterError("port", f"{port} is not a port number (1..65535)")
    folder = Path(project) if project is not None else default_project(video)  # type: ignore[arg-type]
    opened, reader = Project.open_or_create(folder, video)
    if host not in LOOPBACK:
        print(f"pdmtrack annotate: warning: listening on {host}: anyone who can reach this machine and has the token can edit the project "
              "(an SSH tunnel to 127.0.0.1 is safer: see the README)", file=sys.stderr)  # fmt: skip
    sock = bind(host, port)
    session = AnnotationSession(Tracker(settings), opened, reader)
    token = secrets.token_urlsafe(24)
    address = f"http://{host if host in LOOPBACK else socket.gethostname()}:{port}/?token={token}"
    print(f"pdmtrack annotate: {opened.folder} ({reader.path.name}, {reader.num_frames} frames); open {address}", flush=True)
    if open_browser:
        webbrowser.open(address)
    server = uvicorn.Server(uvicorn.Config(create_app(session, token, allowed_hosts(host), port), log_level="warning"))
    server.run(sockets=[sock])
