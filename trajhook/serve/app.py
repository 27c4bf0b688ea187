"""The live page's server: a small Starlette app over one :class:`~trajhook.serve.follow.Follower` per store.

Routes (runs are addressed by their index on the command line; no route takes a path):

- ``/``: the page; ``/static/trajhook.js``: its script (two fixed files of this package);
- ``/api/state?have=E:N,...``: runs, head step, step indices (only the new steps when the epoch is unchanged);
- ``/api/maze?run=&probe=``: a maze probe's level; ``/api/frame?run=&probe=&step=``: one binary frame;
- ``/api/curves?run=``: bucketed loss and target curves; ``/api/pca``: every run in one basis per probe.

With a ``token``, every request must carry ``?token=...`` (the page adds it to each request), else 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajhook.arrows import page_constants
from trajhook.serve import payloads
from trajhook.serve.follow import POLL_S, Follower

STATIC = Path(__file__).parent / "static"
PCA_EVERY_S = 4.0
SCAN_EVERY_S = 1.0  # a folder's new stores show within this and one poll of the page


def page_html(
    token: str | None = None, snapshot: str | None = None, script: str | None = None, title: str = "trajhook"
) -> str:
    """The page: served (the script by URL) or as a static snapshot (script and data inlined)."""
    import html as escape

    title = escape.escape(title)
    html = (STATIC / "page.html").read_text(encoding="utf-8")
    html = html.replace("<title>trajhook</title>", f"<title>{title}</title>")
    html = html.replace('<h1 id="title">trajhook</h1>', f'<h1 id="title">{title}</h1>')
    constants = f'<script id="trajhook-constants" type="application/json">{json.dumps(page_constants())}</script>'
    if snapshot is None:
        query = f"?token={token}" if token else ""
        tag = f'<script src="static/trajhook.js{query}"></script>'
        data = ""
    else:
        tag = f"<script>{script}</script>"
        data = f'<script id="trajhook-snapshot" type="application/json">{snapshot}</script>'
    return html.replace("<!--SCRIPT-->", constants + tag).replace("<!--SNAPSHOT-->", data)


class Runs:
    """The followed stores and the PCA cache shared by every request.

    A path that is a directory is a :class:`~trajhook.serve.folder.Folder`: its stores are added as runs
    when :meth:`discover` finds them (the page's polls call it, at most every :data:`SCAN_EVERY_S`).
    Runs are only ever appended, so a run's index never changes.
    """

    def __init__(self, paths: Sequence[str | Path], poll_s: float = POLL_S) -> None:
        from trajhook.serve.folder import Folder

        self.poll_s = poll_s
        given = [Path(p) for p in paths]
        self.folders = [Folder(p) for p in given if p.is_dir()]
        self.paths = [p for p in given if not p.is_dir()]
        self.names = payloads.run_names(self.paths)
        self.followers = [Follower(p, poll_s=poll_s) for p in self.paths]
        self._scanned = -1e9
        self._scan_lock = threading.Lock()
        self.discover()
        self._pca: tuple[Any, float, list] | None = None
        self._bases: dict[str, payloads.Basis] = {}  # each PCA panel's basis, refitted by payloads.pca's policy
        self._pca_lock = threading.Lock()
        self._turns: threading.Thread | None = None
        threading.Thread(target=self._warm_up, name="trajhook-warm-up", daemon=True).start()

    def discover(self) -> None:
        """Add the stores that appeared in the folders (at most once every :data:`SCAN_EVERY_S`)."""
        if not self.folders or not self._scan_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._scanned < SCAN_EVERY_S:
                return
            self._scanned = time.monotonic()
            for folder in self.folders:
                for path in folder.scan():
                    name = folder.name(path)
                    while name in self.names:
                        name += "'"
                    self.names.append(name)  # names first: a request may index them by the followers' count
                    self.paths.append(path)
                    self.followers.append(Follower(path, poll_s=self.poll_s))
        finally:
            self._scan_lock.release()

    def snapshots(self) -> list:
        return [f.snapshot() for f in self.followers]

    def pca(self) -> list[dict[str, Any]]:
        """The PCA panels, recomputed at most every :data:`PCA_EVERY_S` while records arrive."""
        with self._pca_lock:
            snaps = self.snapshots()
            names = self.names[: len(snaps)]
            key = tuple((s.epoch, len(s.steps), s.run_status) for s in snaps)
            now = time.monotonic()
            if self._pca is None or (self._pca[0] != key and now - self._pca[1] >= PCA_EVERY_S):
                self._pca = (key, now, payloads.pca(names, snaps, self._bases, defer_turns=True))
                wanted = self._bases.get("turns wanted")
                if wanted and (self._turns is None or not self._turns.is_alive()):
                    self._turns = threading.Thread(target=self._find_turns, name="trajhook-turns", daemon=True)
                    self._turns.start()
            return self._pca[2]

    def _warm_up(self, timeout: float = 10.0) -> None:
        """Fit the PCA panels once the stores are read, before a page asks: a page opened later paints at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            f.snapshot().status == "waiting" and f.path.exists() for f in self.followers
        ):
            time.sleep(0.1)
        with contextlib.suppress(Exception):  # a store mid-rebuild: the first request fits instead
            self.pca()

    def _find_turns(self) -> None:
        """Find the finished runs' offline turning points that :meth:`pca` left out, then let it redo the panels."""
        while True:
            with self._pca_lock:
                wanted = self._bases.get("turns wanted", {})
                if not wanted:
                    self._pca = None  # the next request draws them
                    return
                cached, (steps, data) = wanted.popitem()
            turn = payloads.offline_turn(steps, data)
            with self._pca_lock:
                self._bases["offline turns"][cached] = turn

    def stop(self) -> None:
        for follower in self.followers:
            follower.stop()


def create_app(paths: Sequence[str | Path], token: str | None = None, poll_s: float = POLL_S) -> Any:
    """The Starlette app following ``paths``; with ``token``, requests without it get 403."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import trajhook.analysis.trajectory  # noqa: F401  (imported now, not on the first page's first PCA request)

    runs = Runs(paths, poll_s=poll_s)
    api = Handlers(runs, token)

    async def bad_request(request: Any, exc: Exception) -> Any:
        return PlainTextResponse(f"400: {exc}", 400)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        runs.stop()

    routes = [
        Route("/", api.index),
        Route("/static/trajhook.js", api.static_js),
        Route("/api/state", api.state),
        Route("/api/maze", api.maze),
        Route("/api/frame", api.frame),
        Route("/api/curves", api.curves),
        Route("/api/pca", api.pca),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TokenCheck, token=token)],
        exception_handlers={_BadRequest: bad_request},
        lifespan=lifespan,
    )
    app.state.runs = runs
    return app


class TokenCheck:
    """ASGI middleware: with a ``token``, an HTTP request without ``?token=`` equal to it gets 403."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        if scope["type"] == "http" and self.token is not None:
            given = Request(scope).query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await PlainTextResponse("403: this server needs its token (see the URL it printed)", 403)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


class Handlers:
    """The routes' handlers: each reads the request's parameters and answers from :class:`Runs` through
    :mod:`~trajhook.serve.payloads`; reads of a store run on its follower's reader thread."""

    def __init__(self, runs: Runs, token: str | None) -> None:
        self.runs, self.token = runs, token
        self.script = (STATIC / "trajhook.js").read_bytes()

    async def index(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        shown = [*(str(f.root) for f in self.runs.folders), *self.runs.names][:8]
        title = "trajhook: " + ", ".join(shown)  # the page says "(live)" while a writer writes
        return HTMLResponse(page_html(self.token, title=title), headers={"Cache-Control": "no-store"})

    async def static_js(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(self.script, media_type="text/javascript", headers={"Cache-Control": "no-store"})

    async def state(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        have = _have(request.query_params.get("have", ""))
        if self.runs.folders:
            await asyncio.to_thread(self.runs.discover)
        followers = list(self.runs.followers)
        # a fresh read of each store before answering: a new record shows at the next poll
        await asyncio.gather(*(_on_reader(f, f.refresh) for f in followers))
        snaps = [f.snapshot() for f in followers]
        return JSONResponse(payloads.state(self.runs.names[: len(snaps)], snaps, have))

    async def maze(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse

        data = payloads.maze(self._run(request).snapshot(), request.query_params.get("probe", ""))
        return JSONResponse(data) if data is not None else PlainTextResponse("no such maze probe", 404)

    async def frame(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse, Response

        follower = self._run(request)
        step = _int(request, "step")
        probe = request.query_params.get("probe", "")
        blob = await _on_reader(follower, lambda: follower.frame(probe, step))
        if blob is None:
            return PlainTextResponse("no such frame", 404)
        return Response(blob, media_type="application/octet-stream", headers={"Cache-Control": "max-age=3600"})

    async def curves(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(payloads.curves(self._run(request).snapshot()))

    async def pca(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(await asyncio.to_thread(self.runs.pca))

    def _run(self, request: Any) -> Follower:
        """The follower of the request's ``run`` (an index, never a path)."""
        index = _int(request, "run")
        if not 0 <= index < len(self.runs.followers):
            raise _BadRequest(f"no run {index}")
        return self.runs.followers[index]


def _int(request: Any, name: str) -> int:
    try:
        return int(request.query_params.get(name, ""))
    except ValueError:
        raise _BadRequest(f"{name} must be an integer" + (" index" if name == "run" else "")) from None


def _have(text: str) -> list[tuple[int, int]]:
    """``"E:N,E:N"``, the (epoch, count) the page holds per run; ``(-1, 0)`` where it is not that.

    >>> _have("3:10,x,1:")
    [(3, 10), (-1, 0), (-1, 0)]
    """
    have = []
    for part in text.split(","):
        epoch, _, count = part.partition(":")
        try:
            have.append((int(epoch), int(count)))
        except ValueError:
            have.append((-1, 0))
    return have


async def _on_reader(follower: Follower, job: Any) -> Any:
    return await asyncio.wrap_future(follower.submit(job))


class _BadRequest(Exception):
    pass
