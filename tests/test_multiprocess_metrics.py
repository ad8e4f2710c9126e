"""Tests for metrics under real gunicorn workers (prometheus-client multiprocess mode)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import linear_model
import pytest
import requirements
from prometheus_client.parser import text_string_to_metric_families

import clarity_resilience
from clarity_resilience.metrics import (
    asgi_app,
    child_exit,
    exposition,
    prune_dead_workers,
    wsgi_app,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
FEATURES = [0.5, -1.0, 2.0, 0.25]
# Bounds for a busy 2-core machine: worker boot, and the master reaping a killed worker.
BOOT_SECONDS = 60.0
REAP_SECONDS = 30.0

GUNICORN_CONF = """
from clarity_resilience.metrics import child_exit  # noqa: F401 - the documented hook
"""

Samples = list[tuple[str, dict[str, str], float]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def samples(text: str) -> Samples:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in found if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def open_pids(found: Samples) -> set[str]:
    return {
        lab["pid"]
        for n, lab, v in found
        if n == "circuit_breaker_state" and lab.get("state") == "open" and v == 1
    }


def state_pids(found: Samples) -> set[str]:
    return {lab["pid"] for n, lab, _ in found if n == "circuit_breaker_state"}


def gunicorn_flask(conf: pathlib.Path, port: int) -> list[str]:
    """gunicorn, 2 sync workers, the Flask example, the documented child_exit hook."""
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        requirements.missing("gunicorn (the tests dependency group)")
    return [
        *(sys.executable, "-m", "gunicorn", "--config", str(conf), "--workers", "2"),
        *("--bind", f"127.0.0.1:{port}", "--chdir", str(REPO / "examples")),
        "flask_app:create_app()",
    ]


def uvicorn_fastapi(conf: pathlib.Path, port: int) -> list[str]:
    """uvicorn --workers 2, the FastAPI example (no hook: scrapes prune dead workers)."""
    return [
        *(sys.executable, "-m", "uvicorn", "--workers", "2", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--app-dir", str(REPO / "examples")),
        "fastapi_app:create_app",
    ]


class Workers:
    """A real multi-worker server (2 workers) serving an example app on 127.0.0.1."""

    def __init__(self, tmp_path: pathlib.Path, command: Callable[..., list[str]]) -> None:
        self.model_dir = tmp_path / "model"
        linear_model.ensure_model(self.model_dir)
        weights = self.model_dir / "weights" / linear_model.WEIGHTS_FILE
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01  # tampered: every worker starts unready, and reloads keep failing
        weights.write_bytes(data)
        self.prom_dir = tmp_path / "prom"
        self.prom_dir.mkdir()
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text(GUNICORN_CONF)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        source = pathlib.Path(clarity_resilience.__file__).resolve().parent.parent
        env = dict(os.environ)
        env.update(
            PROMETHEUS_MULTIPROC_DIR=str(self.prom_dir),
            CLARITY_MODEL_DIR=str(self.model_dir),
            PYTHONPATH=os.pathsep.join([str(source), str(REPO / "examples")]),
        )
        self.proc = subprocess.Popen(
            command(conf, self.port),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # A new connection per request, so the workers share the requests.
        self.client = httpx.Client(base_url=self.url, timeout=30, headers={"Connection": "close"})

    def wait_ready(self) -> None:
        deadline = time.monotonic() + BOOT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                if len(state_pids(self.scrape())) == 2:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # sleep-ok: polling a booting server, not waiting for a breaker
        pytest.fail("the workers did not come up")

    def scrape(self) -> Samples:
        reply = self.client.get("/metrics")
        assert reply.status_code == 200
        self.last_text = reply.text
        return samples(reply.text)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(
    params=[
        pytest.param(gunicorn_flask, id="gunicorn-flask"),
        pytest.param(uvicorn_fastapi, id="uvicorn-fastapi"),
    ]
)
def workers(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    server = Workers(tmp_path, request.param)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


class TestWorkers:
    def test_counters_sum_and_a_killed_workers_state_vanishes(
        self, workers: Workers, tmp_path: pathlib.Path
    ) -> None:
        """Counters sum over every worker, dead ones too; a SIGKILLed worker's state goes."""
        promtool = requirements.require_binary("promtool")
        sent = 40
        for _ in range(sent):
            assert workers.client.post("/predict", json={"features": FEATURES}).status_code == 503
        # Failing reloads open each worker's breaker (nothing serves, so loads count).
        for _ in range(200):
            if len(open_pids(workers.scrape())) == 2:
                break
            assert workers.client.post("/admin/reload").status_code == 409
        found = workers.scrape()
        opened = open_pids(found)
        assert len(opened) == 2
        assert total(found, "prediction_failure_total", model="linear") == sent
        victim = sorted(opened)[0]
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + REAP_SECONDS
        while victim in state_pids(found) and time.monotonic() < deadline:
            # sleep-ok: the supervisor reaps the worker (gunicorn: runs child_exit)
            time.sleep(0.1)  # sleep-ok: see above
            found = workers.scrape()
        assert victim not in state_pids(found)
        assert open_pids(found) == opened - {victim}
        # What the dead worker counted still counts.
        assert total(found, "prediction_failure_total", model="linear") == sent
        exposition_file = tmp_path / "metrics.txt"
        exposition_file.write_text(workers.last_text)
        with exposition_file.open("rb") as text:
            check = subprocess.run(
                [promtool, "check", "metrics"],
                stdin=text,
                capture_output=True,
                timeout=60,
                check=False,
            )
        assert check.returncode == 0, check.stdout + check.stderr


class TestExpositionHelpers:
    def test_single_process_serves_the_given_registry(
        self, registry: object, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without PROMETHEUS_MULTIPROC_DIR the given registry is served."""
        from prometheus_client import Counter

        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
        Counter("only_here_total", "A counter.", registry=registry)  # type: ignore[arg-type]
        body, content_type = exposition(registry)  # type: ignore[arg-type]
        assert b"only_here_total 0.0" in body
        assert content_type.startswith("text/plain")

    def test_multiprocess_mode_reads_every_workers_files(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With PROMETHEUS_MULTIPROC_DIR set, the files of all workers are aggregated."""
        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        for pid, value in ((101, 2.0), (102, 3.0)):
            db = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
            db.write_value(mmap_key("x_total", "x_total", (), (), "A counter."), value, 0.0)
            db.close()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        body, _ = exposition()
        assert total(samples(body.decode()), "x_total") == 5.0

    def test_wsgi_and_asgi_apps_serve_the_exposition(
        self, registry: object, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The WSGI and ASGI apps answer GET with the registry's text, and refuse POST."""
        import asyncio

        from prometheus_client import Counter

        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        Counter("served_total", "A counter.", registry=registry)  # type: ignore[arg-type]
        statuses: list[str] = []
        wsgi = wsgi_app(registry)  # type: ignore[arg-type]
        body = b"".join(wsgi({"REQUEST_METHOD": "GET"}, lambda s, h: statuses.append(s)))
        assert b"served_total" in body
        wsgi({"REQUEST_METHOD": "POST"}, lambda s, h: statuses.append(s))
        assert statuses == ["200 OK", "405 Method Not Allowed"]

        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        app = asgi_app(registry)  # type: ignore[arg-type]
        asyncio.run(app({"type": "http", "method": "GET", "headers": []}, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] == 200
        assert b"served_total" in sent[1]["body"]  # type: ignore[operator]


class TestDeadWorkers:
    def live_gauge(self, directory: pathlib.Path, pid: int) -> pathlib.Path:
        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        path = directory / f"gauge_liveall_{pid}.db"
        db = MmapedDict(str(path))
        db.write_value(mmap_key("g", "g", (), (), "A gauge."), 1.0, 0.0)
        db.close()
        return path

    def dead_pid(self) -> int:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait(timeout=30)
        return child.pid

    def test_child_exit_removes_the_workers_live_gauges(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """gunicorn's child_exit hook deletes the dead worker's live gauge file."""
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        dead = self.live_gauge(tmp_path, 4242)
        kept = self.live_gauge(tmp_path, 4343)

        class Worker:
            pid = 4242

        child_exit(object(), Worker())
        assert not dead.exists()
        assert kept.exists()

    def test_scrapes_prune_only_workers_that_no_longer_exist(self, tmp_path: pathlib.Path) -> None:
        """A pid that does not exist loses its live gauges; a live one keeps them."""
        gone = self.dead_pid()
        dead = self.live_gauge(tmp_path, gone)
        alive = self.live_gauge(tmp_path, os.getpid())
        assert prune_dead_workers(str(tmp_path)) == [gone]
        assert not dead.exists()
        assert alive.exists()
