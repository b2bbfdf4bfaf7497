"""`playworld play` server over a real WebSocket (FastAPI TestClient): play, isolation, exact undo, limits,
and hostile messages that get an error reply while the server keeps serving."""

import base64
import contextlib
import io
import json
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from playworld.maskgit import SamplingConfig
from playworld.play.config import PlayConfig
from playworld.play.rollout import rollout
from playworld.play.scheduler import StepScheduler
from playworld.play.server import PlayServer
from playworld.world import World, WorldConfig
from tiny_world import SIZE, decode_video, tiny_models

from helpers import make_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), episodes=2, length=6, size=SIZE)


def _server(data_dir, backend: str = "maskgit", **cfg) -> PlayServer:
    config = PlayConfig(**{"steps": 2, "temperature": 1.0, "window_ms": 1.0, "context_frames": 4, **cfg})
    return PlayServer(tiny_models(backend=backend), config, data=data_dir)


class SlowScheduler(StepScheduler):
    """Every tick takes at least ``tick_s``: a model much slower than its players."""

    def __init__(self, tick_s: float) -> None:
        super().__init__(window_ms=0.0)
        self.tick_s = tick_s

    def _tick(self, jobs) -> None:
        time.sleep(self.tick_s)
        super()._tick(jobs)


def _slow_server(data_dir, tick_s: float, **cfg) -> PlayServer:
    config = PlayConfig(**{"steps": 1, "window_ms": 0.0, "context_frames": 4, **cfg})
    return PlayServer(tiny_models(), config, data=data_dir, scheduler=SlowScheduler(tick_s))


def wait_until(condition, timeout_s: float = 5.0) -> float:
    """Seconds until ``condition()`` held (fails after ``timeout_s``)."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout_s, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - t0


def recv(ws) -> dict:
    return json.loads(ws.receive_text())


def ask(ws, **msg) -> dict:
    ws.send_text(json.dumps(msg))
    return recv(ws)


def pixels(reply: dict) -> np.ndarray:
    assert reply["type"] == "frame", reply
    return np.frombuffer(base64.b64decode(reply["rgb"]), np.uint8).reshape(reply["height"], reply["width"], 3)


def png(size=(37, 53), mode="RGBA", seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_page_is_self_contained_and_pixelated(data_dir):
    with TestClient(_server(data_dir).app()) as client:
        page = client.get("/").text
    assert "image-rendering: pixelated" in page and 'new WebSocket(' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing fetched elsewhere


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_play_steps_undo_restart_and_replay_are_exact(data_dir, backend):
    with TestClient(_server(data_dir, backend).app()) as client, client.websocket_connect("/ws") as ws:
        hello = recv(ws)
        assert hello["type"] == "hello" and hello["num_actions"] == 4 and hello["dataset"] == {"prompts": 12, "episodes": 2, "frames": 12}
        assert [a["name"] for a in hello["actions"]] == ["1", "2", "3", "4"]
        first = ask(ws, type="start", source="dataset", index=3, seed=11)
        assert pixels(first).shape == (SIZE, SIZE, 3) and first["step"] == 0 and first["seed"] == 11
        replies = [ask(ws, type="step", action=a) for a in (0, 3, 1)]
        assert [r["step"] for r in replies] == [1, 2, 3] and replies[-1]["history"] == "1,4,2"
        assert replies[1]["label"] == "4" and replies[1]["model_ms"] > 0
        undone = ask(ws, type="undo")
        assert np.array_equal(pixels(undone), pixels(replies[1])) and undone["history"] == "1,4"
        again = ask(ws, type="step", action=1)  # same seed, same history: the very same frame
        assert np.array_equal(pixels(again), pixels(replies[2]))
        assert np.array_equal(pixels(ask(ws, type="restart")), pixels(first))
        replayed = ask(ws, type="replay", actions="1,4,2")
        assert np.array_equal(pixels(replayed), pixels(replies[2])) and replayed["step"] == 3
        assert ask(ws, type="replay", actions="1,9")["message"].startswith("action 2 ('9') is out of range")


@pytest.mark.parametrize("backend", ["maskgit", "flow"])
def test_two_sessions_are_isolated_and_match_a_solo_world(data_dir, backend):
    picture = base64.b64encode(png()).decode()
    with TestClient(_server(data_dir, backend).app()) as client, \
            client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        recv(a), recv(b)
        start_a = ask(a, type="start", source="image", data=picture, seed=5)
        ask(b, type="start", source="dataset", index=0, seed=6)
        frames_a = [pixels(start_a)]
        for i, act in enumerate([2, 0, 3, 3, 1]):
            a.send_text(json.dumps({"type": "step", "action": act}))
            b.send_text(json.dumps({"type": "step", "action": i % 4}))  # concurrent steps in the other session
            frames_a.append(pixels(recv(a)))
            assert recv(b)["step"] == i + 1
        assert ask(b, type="undo")["step"] == 4  # b's undo does not touch a
        frames_a.append(pixels(ask(a, type="step", action=0)))
    from playworld.play.prompts import image_to_frame

    sampling = SamplingConfig(steps=2, copy_penalty=PlayConfig().sampling().copy_penalty)  # the server's setting
    solo = World(*tiny_models(backend=backend), WorldConfig(context_frames=4, decoder_context=4, sampling=sampling))
    expected = rollout(solo, image_to_frame(png(), (SIZE, SIZE)), [2, 0, 3, 3, 1, 0], seed=5)
    assert np.array_equal(np.stack(frames_a), expected)


@pytest.mark.parametrize("message, error", [
    ("not json {", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"type": "fly"}', "unknown message type 'fly'"),
    ('{"no": "type"}', "message has no 'type'"),
    ('{"type": "step", "action": 4}', "'action' must be an integer in [0, 3]"),
    ('{"type": "step", "action": "1"}', "'action' must be an integer"),
    ('{"type": "step", "action": true}', "'action' must be an integer"),
    ('{"type": "step", "action": 0, "x": 1}', "unknown field(s) ['x']"),
    ('{"type": "step", "action": 0}', "no world yet"),
    ('{"type": "undo"}', "no world yet"),
    ('{"type": "record", "format": "avi"}', "'format' must be 'mp4' or 'gif'"),
    ('{"type": "start", "source": "camera"}', "'source' must be 'dataset' or 'image'"),
    ('{"type": "start", "source": "dataset", "index": 99}', "dataset index 99 out of range [0, 12)"),
    ('{"type": "start", "source": "image", "data": "@@@"}', "not valid base64"),
    ('{"type": "start", "source": "image", "data": "aGVsbG8="}', "uploaded picture: not a readable picture"),
    ('{"type": "start", "source": "image", "data": "data:image/png,abc"}', "without ;base64"),
    ("[" * 100_000, "not valid JSON"),
    # numbers that cannot be actions are named as such (a 5,000-digit one was "internal error (ValueError)")
    ('{"type": "step", "action": ' + "9" * 5000 + "}", "'action' must be an integer in [0, 3], got a 5000-digit number"),
    ('{"type": "step", "action": -' + "9" * 5000 + "}", "'action' must be an integer in [0, 3], got a 5000-digit"),
    ('{"type": "step", "action": -1}', "'action' must be an integer in [0, 3], got -1"),
    ('{"type": "step", "action": 1.5}', "'action' must be an integer in [0, 3], got 1.5"),
    ('{"type": "step", "action": 1e400}', "'action' must be an integer in [0, 3], got inf"),
    ('{"type": "step", "action": false}', "'action' must be an integer in [0, 3], got false"),
    ('{"type": "step", "action": [1]}', "'action' must be an integer in [0, 3], got a JSON array"),
    ('{"type": "start", "source": "dataset", "seed": ' + "7" * 5000 + "}", "'seed' must be an integer in [0, "),
    ('{"type": "replay", "actions": "1,' + "9" * 5000 + '"}', "action 2 ('99999"),
    ('{"type": "replay", "actions": "1,\u00b2"}', "action 2 ('\u00b2') is neither a number"),
])
def test_malformed_messages_get_an_error_and_the_session_goes_on(data_dir, message, error):
    with TestClient(_server(data_dir).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        ws.send_text(message)
        reply = recv(ws)
        assert reply["type"] == "error" and error in reply["message"], reply
        ws.send_bytes(b"\x00\x01")
        assert "binary" in recv(ws)["message"]
        assert pixels(ask(ws, type="start", source="dataset", index=0)).shape == (SIZE, SIZE, 3)
        assert ask(ws, type="step", action=1)["step"] == 1


def test_uploads_any_size_and_format_are_fitted_and_oversize_is_refused(data_dir):
    with TestClient(_server(data_dir, max_upload_bytes=20_000).app()) as client, \
            client.websocket_connect("/ws") as ws:
        recv(ws)
        for data, fit in ((png((37, 53)), "crop"), (png((300, 20), "L"), "pad")):
            url = "data:image/png;base64," + base64.b64encode(data).decode()
            assert pixels(ask(ws, type="start", source="image", data=url, fit=fit)).shape == (SIZE, SIZE, 3)
        jpeg = io.BytesIO()
        Image.new("RGB", (640, 480), (200, 10, 10)).save(jpeg, format="JPEG")
        assert ask(ws, type="start", source="image", data=base64.b64encode(jpeg.getvalue()).decode())["type"] == "frame"
        over = base64.b64encode(png((85, 85), "RGB", seed=1)).decode()  # ~21.7 kB of noise
        reply = ask(ws, type="start", source="image", data=over)
        assert reply["type"] == "error" and "larger than the upload limit of 20000 bytes" in reply["message"]
        huge = ask(ws, type="start", source="image", data=base64.b64encode(png((200, 200), seed=1)).decode())
        assert huge["type"] == "error" and "at most 20000 bytes" in huge["message"]
        assert ask(ws, type="step", action=0)["step"] == 1  # still playing the JPEG world


def test_decompression_bombs_and_too_many_pixels_are_refused(data_dir):
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 Mpx in a few kB
    with TestClient(_server(data_dir, max_pixels=10_000).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        reply = ask(ws, type="start", source="image", data=base64.b64encode(bomb.getvalue()).decode())
        assert reply["type"] == "error" and "uploaded picture: too many pixels" in reply["message"]
        reply = ask(ws, type="start", source="image", data=base64.b64encode(png((200, 60))).decode())
        assert reply["message"] == "uploaded picture: 200x60 pixels exceeds the limit of 10000"
        assert ask(ws, type="start", source="image", data=base64.b64encode(png((90, 60))).decode())["type"] == "frame"


def test_session_limit_refuses_extra_players_until_one_leaves(data_dir):
    server = _server(data_dir, max_sessions=2)
    with TestClient(server.app()) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
            recv(a), recv(b)
            with client.websocket_connect("/ws") as c:
                reply = recv(c)
                assert reply["type"] == "error" and "server full: 2 sessions" in reply["message"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    c.receive_text()
                assert closed.value.code == 1013
            assert ask(a, type="start", source="dataset")["type"] == "frame"  # the others play on
        with client.websocket_connect("/ws") as d:
            assert recv(d)["type"] == "hello"
            status = client.get("/status").json()
            assert status["sessions"] == 1 and status["dtype"] == "float32"


def test_rate_limit_drops_excess_messages_with_an_error(data_dir):
    with TestClient(_server(data_dir, rate=2.0, burst=5).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        for _ in range(20):
            ws.send_text('{"type": "restart"}')
        replies = [recv(ws)["message"] for _ in range(20)]
        limited = [m for m in replies if m.startswith("rate limit: at most 2 messages per second")]
        assert 13 <= len(limited) <= 15 and replies[:5] == [replies[0]] * 5 and "no world yet" in replies[0]


def test_recordings_download_as_mp4_and_gif_that_decode(data_dir, tmp_path):
    with TestClient(_server(data_dir, record_scale=2).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        ask(ws, type="start", source="dataset", index=1)
        for a in (0, 1, 2, 3):
            ask(ws, type="step", action=a)
        ask(ws, type="undo")
        for fmt in ("mp4", "gif"):
            reply = ask(ws, type="record", format=fmt)
            assert reply["type"] == "recording" and reply["frames"] == 4
            path = tmp_path / f"rec.{fmt}"
            path.write_bytes(base64.b64decode(reply["data"]))
            assert decode_video(path).shape == (4, 2 * SIZE, 2 * SIZE, 3)


def test_long_play_keeps_history_and_recording_bounded(data_dir):
    server = _server(data_dir, max_history=5, checkpoint_every=5, max_record_frames=8, steps=1)
    with TestClient(server.app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        ask(ws, type="start", source="dataset", index=0)
        for i in range(60):
            reply = ask(ws, type="step", action=i % 4)
        (session,) = server.sessions.values()
        assert reply["step"] == 60 and reply["rebases"] == 11 and len(reply["history"].split(",")) == 5
        assert len(session.frames) == 8 and len(session.actions) == 5
        assert session.world.cache_frames() == (4, 4)
        for _ in range(5):
            assert ask(ws, type="undo")["type"] == "frame"
        assert "cannot undo further" in ask(ws, type="undo")["message"]


def test_idle_sessions_are_closed(data_dir):
    with TestClient(_server(data_dir, idle_timeout_s=0.2).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        assert "without a message" in recv(ws)["message"]
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()


def test_named_actions_from_the_run_directory_label_keys_and_replays(data_dir, tmp_path):
    from playworld.play.actions import ActionName, save_action_names

    save_action_names(tmp_path, [ActionName(2, "right", "ArrowRight"), ActionName(0, "jump", "ArrowUp")])
    server = PlayServer(tiny_models(), PlayConfig(steps=1, context_frames=4), run_dir=tmp_path, data=data_dir)
    with TestClient(server.app()) as client, client.websocket_connect("/ws") as ws:
        hello = recv(ws)
        assert [(a["name"], a["key"]) for a in hello["actions"]] == [
            ("jump", "ArrowUp"), ("2", None), ("right", "ArrowRight"), ("4", None)]
        ask(ws, type="start", source="dataset", index=0)
        assert ask(ws, type="step", action=2)["label"] == "right"
        reply = ask(ws, type="replay", actions="right, jump 4")
        assert reply["history"] == "3,1,4" and reply["step"] == 3
    (tmp_path / "action_names.json").write_text('{"format": "playworld.action_names/1", "actions": [{"latent": 9, '
                                                '"name": "up"}]}')
    with pytest.raises(ValueError, match=r"action_names.json: actions\[0\]: latent 9 is not an action"):
        PlayServer(tiny_models(), PlayConfig(steps=1), run_dir=tmp_path)


def test_players_who_leave_free_their_slot_and_drop_their_queued_work_at_once(data_dir):
    server = _slow_server(data_dir, tick_s=0.1, max_sessions=3)
    with TestClient(server.app()) as client, contextlib.ExitStack() as stack:
        players = [stack.enter_context(client.websocket_connect("/ws")) for _ in range(3)]
        for ws in players:
            recv(ws)
            assert ask(ws, type="start", source="dataset", index=0)["type"] == "frame"
            ws.send_text(json.dumps({"type": "replay", "actions": ",".join(["2"] * 200)}))  # 20 s of ticks
            for a in range(3):
                ws.send_text(json.dumps({"type": "step", "action": a}))
        wait_until(lambda: server.scheduler.pending == 3)  # the three replays are running
        for ws in players:
            ws.close(1000)  # they leave mid-reply, without waiting for an answer
        assert wait_until(lambda: not server.sessions) < 2.0  # slots free at once, not after the replays
        assert server.scheduler.pending == 0  # no work left for the sessions that left
        ticks = server.scheduler.stats.ticks
        with client.websocket_connect("/ws") as newcomer:
            assert recv(newcomer)["type"] == "hello"
            time.sleep(0.5)
            assert server.scheduler.stats.ticks <= ticks + 1  # at most the tick that was running
            assert ask(newcomer, type="start", source="dataset", index=1)["type"] == "frame"


def test_a_flood_is_capped_by_what_is_queued_and_the_connection_stays_usable(data_dir):
    server = _slow_server(data_dir, tick_s=0.1, max_queued=3)  # rate 60/s, bursts of 120
    with TestClient(server.app()) as client, client.websocket_connect("/ws") as ws:
        assert recv(ws)["limits"]["max_queued"] == 3
        ask(ws, type="start", source="dataset", index=0)
        for i in range(300):  # far faster than the model: 300 steps at once
            ws.send_text(json.dumps({"type": "step", "action": i % 4}))
        replies = [recv(ws) for _ in range(300)]  # one reply each, in the order sent
        played = [r for r in replies if r["type"] == "frame"]
        refused = [r for r in replies if r["type"] != "frame"]
        # the first 3 are queued; a step finishing while the flood still arrives (a loaded machine sends
        # slowly) frees a place for one more, so a few more may play, in order
        assert [r["step"] for r in played] == list(range(1, len(played) + 1)) and 3 <= len(played) <= 12
        busy = [r for r in refused if r["message"].startswith("busy: 3 requests of this session are waiting")]
        limited = [r for r in refused if r["message"].startswith("rate limit: at most 60 messages per second")]
        assert len(busy) + len(limited) == len(refused) and busy and limited  # (the bucket refills meanwhile)
        assert server.scheduler.stats.ticks <= len(played) + 2  # the refused steps cost the model nothing
        assert ask(ws, type="step", action=1)["step"] == len(played) + 1  # and the session plays on


@pytest.mark.parametrize("data, why", [
    (b"hello, world", "it is text, not a picture"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "it is text, not a picture; SVG is not supported"),
    (bytes(range(256)), "not in an image format this server reads, such as PNG, JPEG"),
    (png()[:60], "image file is truncated"),
])
def test_non_images_are_named_without_object_reprs(data_dir, data, why):
    with TestClient(_server(data_dir).app()) as client, client.websocket_connect("/ws") as ws:
        recv(ws)
        reply = ask(ws, type="start", source="image", data=base64.b64encode(data).decode())
        assert reply["type"] == "error" and reply["message"].startswith(f"uploaded picture: not a readable picture ({why}")
        assert "0x" not in reply["message"] and "<" not in reply["message"] and "Error" not in reply["message"]
        assert ask(ws, type="start", source="dataset", index=0)["type"] == "frame"


@contextlib.contextmanager
def live(server: PlayServer, **uvicorn_options):
    """``server`` under uvicorn on 127.0.0.1 with the transport limit `playworld play` gives it; yields its URL."""
    import threading

    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=0, log_level="warning",
                                       ws_max_size=server.config.max_message_chars, **uvicorn_options))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started, timeout_s=20)
        yield f"ws://127.0.0.1:{uv.servers[0].sockets[0].getsockname()[1]}/ws"
    finally:
        uv.should_exit = True
        thread.join(20)


def test_oversize_messages_get_an_error_reply_up_to_the_transport_limit_then_close_with_1009(data_dir):
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    server = _server(data_dir, max_upload_bytes=20_000)
    served, transport = server.config.max_served_chars, server.config.max_message_chars
    envelope = '{"type": "start", "source": "image", "data": "%s"}'
    with live(server) as url, connect(url, max_size=None) as ws:
        hello = json.loads(ws.recv(timeout=20))
        assert hello["limits"]["max_served_chars"] == served and hello["limits"]["max_message_bytes"] == transport
        for size in (served + 1, transport - 100):  # over what is served, within the transport's limit
            ws.send(envelope % ("A" * (size - len(envelope) + 2)))
            reply = json.loads(ws.recv(timeout=20))
            assert reply["type"] == "error" and reply["message"].startswith(
                f"message of {size} characters exceeds the limit of {served} (an uploaded picture may have at most "
                "20000 bytes)"), reply["message"][:200]
        ws.send(json.dumps({"type": "start", "source": "dataset", "index": 0}))
        assert json.loads(ws.recv(timeout=20))["type"] == "frame"  # the session went on
        ws.send("A" * (transport + 1))  # over the transport's limit: closed before the server sees it
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        wait_until(lambda: not server.sessions)  # and the slot is free


def test_hello_counts_prompts_episodes_and_frames(data_dir):
    with TestClient(_server(data_dir, prompt_frames=4).app()) as client, client.websocket_connect("/ws") as ws:
        assert recv(ws)["dataset"] == {"prompts": 6, "episodes": 2, "frames": 12}  # 2 episodes of 6 frames
    with TestClient(PlayServer(tiny_models(), PlayConfig(steps=1, context_frames=4)).app()) as client, \
            client.websocket_connect("/ws") as ws:
        assert recv(ws)["dataset"] == {"prompts": 0, "episodes": 0, "frames": 0}


def test_a_dataset_with_a_missing_or_truncated_shard_is_refused_before_serving(tmp_path):
    from playworld.errors import DatasetError

    data = make_dataset(tmp_path / "data", episodes=2, length=6, size=SIZE)
    (shard,) = sorted((data / "shards").glob("*.frames.npy"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=rf"{shard.name}: \d+ bytes, the manifest records \d+ \(truncated"):
        _server(data)
    shard.unlink()
    with pytest.raises(DatasetError, match=rf"{shard.name}: shard file missing \(the manifest lists it\)"):
        _server(data)


def test_under_uvicorn_players_who_leave_mid_replay_free_their_slots_at_once(data_dir):
    from websockets.sync.client import connect

    server = _slow_server(data_dir, tick_s=0.1, max_sessions=2)
    with live(server) as url:
        for _ in range(2):
            ws = connect(url)
            assert json.loads(ws.recv(timeout=20))["type"] == "hello"
            ws.send(json.dumps({"type": "start", "source": "dataset", "index": 0}))
            assert json.loads(ws.recv(timeout=20))["type"] == "frame"
            ws.send(json.dumps({"type": "replay", "actions": ",".join(["3"] * 200)}))  # 20 s of ticks
            ws.send(json.dumps({"type": "step", "action": 0}))
            ws.close()  # leaves without waiting for the replay
        assert wait_until(lambda: not server.sessions) < 2.0
        assert server.scheduler.pending == 0
        with connect(url) as newcomer:
            assert json.loads(newcomer.recv(timeout=20))["type"] == "hello"  # not "server full"


def test_under_uvicorn_a_flood_of_2000_steps_is_answered_and_keepalive_holds(data_dir):
    from websockets.sync.client import connect

    server = _slow_server(data_dir, tick_s=0.05, rate=1e6, burst=10**6)  # only the queue cap (8) limits
    with live(server, ws_ping_interval=0.5, ws_ping_timeout=1.0) as url, connect(url) as ws:
        ws.recv(timeout=20)
        ws.send(json.dumps({"type": "start", "source": "dataset", "index": 0}))
        assert json.loads(ws.recv(timeout=20))["type"] == "frame"
        for i in range(2000):
            ws.send(json.dumps({"type": "step", "action": i % 4}))
        replies = [json.loads(ws.recv(timeout=20)) for _ in range(2000)]
        frames = [r for r in replies if r["type"] == "frame"]
        assert 8 <= len(frames) < 100 and [r["step"] for r in frames] == list(range(1, len(frames) + 1))
        assert all(r["message"].startswith("busy: 8 requests") for r in replies if r["type"] == "error")
        # a 3 s replay: the keepalive pings (every 0.5 s) are answered while the model works
        ws.send(json.dumps({"type": "replay", "actions": ",".join(["1"] * 60)}))
        assert json.loads(ws.recv(timeout=20))["step"] == 60
        ws.send(json.dumps({"type": "step", "action": 2}))
        assert json.loads(ws.recv(timeout=20))["step"] == 61


def test_action_strings_name_huge_and_non_ascii_numbers():
    from playworld.errors import ConfigError
    from playworld.play.actions import parse_action_string

    assert parse_action_string("0000000001, 4", 4) == [0, 3]  # leading zeros are still the number
    with pytest.raises(ConfigError, match=r"action 2 \('99999.*'\) is out of range 1..4"):
        parse_action_string("1," + "9" * 5000, 4)
    with pytest.raises(ConfigError, match=r"action 1 \('\u0663'\) is neither a number 1..4 nor a named action"):
        parse_action_string("\u0663", 4)  # ARABIC-INDIC DIGIT THREE: isdigit(), but not an ASCII number


def test_a_flood_of_refusals_takes_one_inbox_entry_and_each_message_still_gets_its_reply():
    import asyncio

    from playworld.play.server import MAX_UNANSWERED, _Inbox

    async def main():
        inbox = _Inbox()
        for _ in range(3 * MAX_UNANSWERED):  # would block reading if each refusal took an entry
            await asyncio.wait_for(inbox.put("rate limit"), timeout=1.0)
        await inbox.put("busy")
        assert len(inbox.entries) == 2 and inbox.requests == 0
        replies = [await inbox.get() for _ in range(3 * MAX_UNANSWERED + 1)]
        assert replies == ["rate limit"] * (3 * MAX_UNANSWERED) + ["busy"] and not inbox.entries

    asyncio.run(main())
