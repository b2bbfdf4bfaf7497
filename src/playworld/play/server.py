"""`playworld play`'s web server: one page, one WebSocket per player, every world stepped by one scheduler.

Each connection gets its own :class:`~playworld.play.session.Session` with its own ``World`` (its own
caches and seed; the model weights are shared). All model work goes through one
:class:`~playworld.play.scheduler.StepScheduler`. Limits: sessions, upload bytes and pixels, message
size and rate (token bucket), requests queued per session, idle time. Any bad message gets an ``error``
reply and the session goes on; a player who leaves ends their session at once (:meth:`PlayServer.serve`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse

from playworld.errors import PlayworldError
from playworld.play import protocol as P
from playworld.play.actions import format_action_string, load_action_names, parse_action_string
from playworld.play.config import PlayConfig
from playworld.play.prompts import DatasetPrompts, fit_frames, image_to_frame, world_frame_size
from playworld.play.scheduler import StepScheduler
from playworld.play.session import Session, SessionError
from playworld.world import World, WorldConfig

log = logging.getLogger("playworld.play")
MAX_UNANSWERED = 1024  # entries (see _Inbox) read from one player and not yet answered; past it, reading waits


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.last = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Inbox:
    """One connection's messages read and not yet answered, in order: requests for the model, or the
    error replies of messages that were refused (ready to send). A run of identical replies (a flood's
    refusals) takes one entry, so a flood never fills it; past ``MAX_UNANSWERED`` entries, reading waits."""

    def __init__(self) -> None:
        self.entries: deque[list[Any]] = deque()  # [item, copies]
        self.requests = 0  # requests waiting or being answered
        self._ready, self._room = asyncio.Event(), asyncio.Event()

    async def put(self, item: P.Message | str) -> None:
        if isinstance(item, str) and self.entries and self.entries[-1][0] == item:
            self.entries[-1][1] += 1
        else:
            while len(self.entries) >= MAX_UNANSWERED:
                self._room.clear()
                await self._room.wait()
            self.entries.append([item, 1])
            self.requests += not isinstance(item, str)
        self._ready.set()

    async def get(self) -> P.Message | str:
        while not self.entries:
            self._ready.clear()
            await self._ready.wait()
        entry = self.entries[0]
        entry[1] -= 1
        if entry[1] == 0:
            self.entries.popleft()
            self._room.set()
        return entry[0]

    def answered(self, item: P.Message | str) -> None:
        self.requests -= not isinstance(item, str)


class PlayServer:
    """The shared model, the scheduler and the live sessions; :meth:`app` is the FastAPI application."""

    def __init__(self, models: tuple[Any, Any, Any], config: PlayConfig | None = None, *,
                 run_dir: str | Path | None = None, data: str | Path | None = None,
                 scheduler: StepScheduler | None = None) -> None:
        """``scheduler``: the one whose worker thread loaded ``models`` (see :meth:`StepScheduler.call`);
        a new one by default."""
        self.config = c = config or PlayConfig()
        self.models = models
        self.world_config = WorldConfig(context_frames=c.context_frames, decoder_context=c.context_frames,
                                        sampling=c.sampling(run_dir))
        probe = self.new_world()
        self.num_actions, self.size = probe.num_actions, world_frame_size(probe)
        self.dtype = str(probe.dtype).removeprefix("torch.")  # what a step computes in (playworld.precision)
        self.names = load_action_names(run_dir, self.num_actions)
        self.prompts = DatasetPrompts(Path(data), c.prompt_frames) if data is not None else None
        self.limits = c.session_limits()
        self.scheduler = scheduler or StepScheduler(c.window_ms, defer_commit=c.defer_commit)
        self.sessions: dict[int, Session] = {}
        self._next_id = 0

    def new_world(self) -> World:
        return World(*self.models, self.world_config)

    def hello(self) -> dict[str, Any]:
        c, p = self.config, self.prompts
        labels = {a.latent: a for a in self.names}
        return {"type": "hello", "height": self.size[0], "width": self.size[1], "num_actions": self.num_actions,
                "actions": [{"latent": i, "name": labels[i].name if i in labels else str(i + 1),
                             "key": labels[i].key if i in labels else None} for i in range(self.num_actions)],
                "dataset": {"prompts": len(p), "episodes": p.episodes, "frames": p.num_frames} if p is not None else
                {"prompts": 0, "episodes": 0, "frames": 0},
                "limits": {"max_upload_bytes": c.max_upload_bytes, "max_served_chars": c.max_served_chars,
                           "max_message_bytes": c.max_message_chars, "rate": c.rate, "burst": c.burst,
                           "max_queued": c.max_queued, "max_history": c.max_history,
                           "max_record_frames": c.max_record_frames, "max_sessions": c.max_sessions}}

    def _label(self, action: int | None) -> str | None:
        if action is None:
            return None
        names = {a.latent: a.name for a in self.names}
        return names.get(action, str(action + 1))

    async def _prompt(self, msg: P.Start, rng: np.random.Generator) -> np.ndarray:
        if msg.source == "dataset":
            if self.prompts is None:
                raise P.ProtocolError("start: this server has no dataset (run `playworld play RUN --data DIR`)")
            n = len(self.prompts)
            index = int(rng.integers(n)) if msg.index is None else msg.index
            if index >= n:
                raise P.ProtocolError(f"start: dataset index {index} out of range [0, {n})")
            return fit_frames(self.prompts.get(index), self.size)
        assert msg.image is not None
        return await asyncio.to_thread(image_to_frame, msg.image, self.size, fit=msg.fit,
                                       max_bytes=self.config.max_upload_bytes, max_pixels=self.config.max_pixels,
                                       name="uploaded picture")

    def _encode(self, frames: np.ndarray, fmt: str) -> bytes:
        from playworld.video import write_video

        with tempfile.TemporaryDirectory(prefix="playworld-rec-") as tmp:
            path = Path(tmp) / f"recording.{fmt}"
            write_video(path, frames, fps=self.config.record_fps, scale=self.config.record_scale)
            return path.read_bytes()

    async def dispatch(self, session: Session, msg: P.Message, rng: np.random.Generator) -> str:
        """Serve one parsed message; returns the JSON reply."""
        t0 = time.perf_counter()
        action = None
        if isinstance(msg, P.Record):
            frames = session.recording()
            data = await asyncio.to_thread(self._encode, frames, msg.format)
            return json.dumps({"type": "recording", "format": msg.format, "frames": len(frames),
                               "data": base64.b64encode(data).decode("ascii")})
        if isinstance(msg, P.Start):
            prompt = await self._prompt(msg, rng)
            seed = msg.seed if msg.seed is not None else secrets.randbits(31)
            frame = await self.scheduler.run(session.start(prompt, seed))
        elif isinstance(msg, P.Step):
            action = msg.action
            frame = await self.scheduler.run(session.step(action))
        elif isinstance(msg, P.Undo):
            frame = await self.scheduler.run(session.undo())
        elif isinstance(msg, P.Restart):
            frame = await self.scheduler.run(session.restart())
        else:
            actions = parse_action_string(msg.actions, self.num_actions, self.names, max_len=self.limits.max_replay)
            frame = await self.scheduler.run(session.replay(actions))
        return P.frame_message(
            np.ascontiguousarray(frame).tobytes(), *frame.shape[:2], step=session.total_steps, action=action,
            label=self._label(action), model_ms=round(session.step_ms, 2) if action is not None else None,
            server_ms=round(1000 * (time.perf_counter() - t0), 2), seed=session.seed, rebases=session.rebases,
            history=format_action_string(session.actions), sessions=len(self.sessions))

    async def serve(self, ws: WebSocket) -> None:
        """One player's connection, from accept to close.

        Two tasks share it: one reads every message as it arrives (so a disconnect is seen at once, and
        the transport's keepalive pings are answered however slow the model is) and queues it; the other
        answers the queued messages in order. When the player leaves, the answering task is cancelled:
        its operation leaves the scheduler, the queued messages are dropped, and the slot is free."""
        await ws.accept()
        c = self.config
        if len(self.sessions) >= c.max_sessions:
            await ws.send_text(P.error_message(f"server full: {c.max_sessions} sessions are playing; try later"))
            await ws.close(code=1013)
            return
        sid, self._next_id = self._next_id, self._next_id + 1
        session = self.sessions[sid] = Session(self.new_world(), self.limits)
        self.scheduler.players = len(self.sessions)
        inbox = _Inbox()
        try:
            await ws.send_text(json.dumps({**self.hello(), "session": sid}))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._answer, ws, sid, session, inbox, tasks.cancel_scope)
                idle = await self._read(ws, inbox)
                tasks.cancel_scope.cancel()  # the player left: their queued and running work ends here
            if idle:
                await ws.send_text(P.error_message(f"closed after {c.idle_timeout_s:.0f} s without a message"))
                await ws.close(code=1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the client left mid-reply (uvicorn's ClientDisconnected is an OSError)
        finally:
            self.sessions.pop(sid, None)
            self.scheduler.players = len(self.sessions)

    async def _read(self, ws: WebSocket, inbox: _Inbox) -> bool:
        """Read messages as they arrive and queue them (parsed, or as their error reply) until the player
        leaves (returns False) or sends nothing for ``idle_timeout_s`` (returns True)."""
        c = self.config
        limiter = RateLimiter(c.rate, c.burst)
        while True:
            try:
                event = await asyncio.wait_for(ws.receive(), timeout=c.idle_timeout_s)
            except TimeoutError:
                return True
            if event["type"] == "websocket.disconnect":
                return False
            if not limiter.allow():
                await inbox.put(P.error_message(f"rate limit: at most {c.rate:g} messages per second "
                                                f"(bursts of {c.burst}); message dropped"))
                continue
            try:
                msg: P.Message | str = P.parse_message(
                    event.get("text"), num_actions=self.num_actions,
                    max_upload_bytes=c.max_upload_bytes, max_message_chars=c.max_served_chars)
            except P.ProtocolError as e:
                msg = P.error_message(str(e))
            if not isinstance(msg, str) and inbox.requests >= c.max_queued:
                msg = P.error_message(f"busy: {inbox.requests} requests of this session are waiting or running "
                                      f"(at most {c.max_queued}); message dropped, send it again after a reply")
            await inbox.put(msg)

    async def _answer(self, ws: WebSocket, sid: int, session: Session, inbox: _Inbox,
                      connection: anyio.CancelScope) -> None:
        """Answer the queued messages in the order they came, one at a time; a failed send (the player
        left mid-reply) ends the connection."""
        try:
            await self._answer_all(ws, sid, session, inbox)
        except (WebSocketDisconnect, RuntimeError, OSError):
            connection.cancel()

    async def _answer_all(self, ws: WebSocket, sid: int, session: Session, inbox: _Inbox) -> None:
        rng = np.random.default_rng(secrets.randbits(64))
        while True:
            item = await inbox.get()
            if isinstance(item, str):
                reply = item
            else:
                try:
                    reply = await self.dispatch(session, item, rng)
                except (P.ProtocolError, SessionError, PlayworldError) as e:
                    reply = P.error_message(str(e))
                except Exception as e:  # noqa: BLE001 - one session's failure never takes the server down
                    log.exception("session %d: unexpected error", sid)
                    reply = P.error_message(f"internal error ({type(e).__name__}); the session goes on")
                finally:
                    inbox.answered(item)
            await ws.send_text(reply)

    def app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            yield
            self.scheduler.close()

        app = FastAPI(title="playworld", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
        page = resources.files("playworld.play").joinpath("static/play.html").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        async def index() -> str:
            return page

        @app.get("/status")
        async def status() -> JSONResponse:
            s = self.scheduler.stats
            return JSONResponse({"sessions": len(self.sessions), "max_sessions": self.config.max_sessions,
                                 "ticks": s.ticks, "steps": s.steps, "max_batch": s.max_batch,
                                 "idle_commits": s.idle_commits, "dtype": self.dtype})

        @app.websocket("/ws")
        async def websocket(ws: WebSocket) -> None:
            await self.serve(ws)

        return app
