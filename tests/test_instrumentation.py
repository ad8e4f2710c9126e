"""Tests for clarity_resilience.instrumentation: metrics, audit events, hook configuration."""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog
import time_machine
from prometheus_client import CollectorRegistry, generate_latest

from clarity_resilience import Breaker, CircuitOpenError, Reason, instrumentation
from clarity_resilience.instrumentation import (
    BREAKER_STATES,
    BreakerOperatorAction,
    BreakerRegistered,
    BreakerStateChanged,
    BreakerStorageFailed,
    CallRejected,
    Emitter,
    Event,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
    ModelLoaded,
    ModelLoadFailed,
    ModelRegistered,
    PredictionFailed,
    PredictionSucceeded,
    PrometheusOnEventHook,
    ReloadPromoted,
    ReloadRefused,
    StructlogOnEventHook,
    get_on_event_hooks,
    prometheus_hook,
    set_on_event_hooks,
)
from clarity_resilience.instrumentation._structlog import StructlogHook
from clarity_resilience.testing import capture_events

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def boom() -> None:
    raise RuntimeError("down")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class TestPrometheus:
    def test_series_exist_before_the_first_failure(self, registry: CollectorRegistry) -> None:
        """Every label set of a new breaker is pre-initialised, so alerts work from the start."""
        Breaker("b", registry=registry)
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") == 0.0
        for old in BREAKER_STATES:
            for new in BREAKER_STATES:
                if old != new:
                    value = sample(
                        registry,
                        "circuit_breaker_transitions_total",
                        breaker="b",
                        from_state=old,
                        to_state=new,
                    )
                    assert value == 0.0
        assert sample(registry, "circuit_breaker_state", breaker="b", state="closed") == 1.0
        assert sample(registry, "circuit_breaker_state", breaker="b", state="open") == 0.0

    def test_scripted_sequence_gives_exact_counts(
        self, registry: CollectorRegistry, clock: time_machine.Traveller
    ) -> None:
        """Open, reject 3x, failed trial, reject, successful trial: every sample is exact."""
        breaker = Breaker("b", registry=registry)
        for _ in range(5):
            with pytest.raises(RuntimeError):
                breaker.call(boom)
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: None)
        clock.shift(60)
        with pytest.raises(RuntimeError):
            breaker.call(boom)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        clock.shift(60)
        breaker.call(lambda: None)

        def transitions(old: str, new: str) -> float | None:
            return sample(
                registry,
                "circuit_breaker_transitions_total",
                breaker="b",
                from_state=old,
                to_state=new,
            )

        assert transitions("closed", "open") == 1.0
        assert transitions("open", "half-open") == 2.0
        assert transitions("half-open", "open") == 1.0
        assert transitions("half-open", "closed") == 1.0
        assert transitions("closed", "half-open") == 0.0
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") == 4.0
        assert sample(registry, "circuit_breaker_state", breaker="b", state="closed") == 1.0
        assert sample(registry, "circuit_breaker_state", breaker="b", state="open") == 0.0
        assert sample(registry, "circuit_breaker_state", breaker="b", state="half-open") == 0.0

    def test_two_breakers_share_one_registry(self, registry: CollectorRegistry) -> None:
        """Metrics are created once per registry: a second breaker raises no duplicate error."""
        Breaker("a", registry=registry)
        Breaker("b", registry=registry)
        Breaker("a", registry=registry)
        assert sample(registry, "circuit_breaker_rejections_total", breaker="a") == 0.0
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") == 0.0

    def test_no_spurious_closed_to_closed_transition(self, registry: CollectorRegistry) -> None:
        """Successes and sub-threshold failures record no transition at all."""
        breaker = Breaker("b", registry=registry)
        for _ in range(3):
            with pytest.raises(RuntimeError):
                breaker.call(boom)
            breaker.call(lambda: None)
        text = generate_latest(registry).decode()
        assert 'to_state="closed"} 0.0' in text
        assert 'from_state="closed",to_state="closed"' not in text

    def test_model_series_are_pre_initialised(self, registry: CollectorRegistry) -> None:
        """A registered model has a zero failure series for every reason."""
        Emitter(registry).emit(ModelRegistered(model="m"))
        assert sample(registry, "prediction_success_total", model="m") == 0.0
        for reason in Reason:
            assert (
                sample(registry, "prediction_failure_total", model="m", reason=reason.value) == 0.0
            )
        assert (
            sample(registry, "model_integrity_failures_total", model="m", reason="missing") == 0.0
        )

    def test_prediction_failure_counts_by_reason(self, registry: CollectorRegistry) -> None:
        """A PredictionFailed event increments exactly its reason's series."""
        emitter = Emitter(registry)
        emitter.emit(
            PredictionFailed(
                model="m", reason=Reason.TIMEOUT, error_type="TimeoutError", duration=0.1
            )
        )
        assert sample(registry, "prediction_failure_total", model="m", reason="timeout") == 1.0
        assert sample(registry, "prediction_failure_total", model="m", reason="internal") == 0.0

    def test_namespace_prefixes_every_metric(self, registry: CollectorRegistry) -> None:
        """prometheus_hook(namespace=...) prefixes metric names."""
        set_on_event_hooks([prometheus_hook(namespace="svc")])
        try:
            Breaker("b", registry=registry)
        finally:
            set_on_event_hooks(None)
        assert sample(registry, "svc_circuit_breaker_rejections_total", breaker="b") == 0.0
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") is None


class TestStructlog:
    def test_events_have_documented_names_and_keys(
        self, registry: CollectorRegistry, clock: time_machine.Traveller
    ) -> None:
        """Opening, rejecting and closing log clarity_resilience.* events with their fields."""
        with structlog.testing.capture_logs() as logs:
            breaker = Breaker("b", fail_max=1, registry=registry)
            with pytest.raises(RuntimeError):
                breaker.call(boom)
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: None)
            clock.shift(60)
            breaker.call(lambda: None)
        by_name = {entry["event"]: entry for entry in logs}
        assert list(by_name) == [
            "clarity_resilience.breaker_registered",
            "clarity_resilience.breaker_opened",
            "clarity_resilience.call_rejected",
            "clarity_resilience.breaker_half_opened",
            "clarity_resilience.breaker_closed",
        ]
        opened = by_name["clarity_resilience.breaker_opened"]
        assert opened["log_level"] == "warning"
        assert (opened["breaker"], opened["old_state"], opened["new_state"]) == (
            "b",
            "closed",
            "open",
        )
        rejected = by_name["clarity_resilience.call_rejected"]
        assert rejected["retry_after"] == pytest.approx(60.0)
        assert rejected["state"] == "open"

    def test_rejections_are_all_counted_and_sampled_in_the_log(
        self, registry: CollectorRegistry, clock: time_machine.Traveller
    ) -> None:
        """1500 rejections: 1500 counted; logged at the 1st, 10th, 100th and 1000th."""
        breaker = Breaker("b", fail_max=1, registry=registry)
        with pytest.raises(RuntimeError):
            breaker.call(boom)
        with structlog.testing.capture_logs() as logs:
            for _ in range(1500):
                with pytest.raises(CircuitOpenError):
                    breaker.call(lambda: None)
            clock.shift(60)
            with pytest.raises(RuntimeError):
                breaker.call(boom)  # the trial fails: open again, the count restarts
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: None)
        rejected = [e for e in logs if e["event"] == "clarity_resilience.call_rejected"]
        assert [e["rejected_since_open"] for e in rejected] == [1, 10, 100, 1000, 1]
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") == 1501.0

    def test_reasons_are_logged_as_plain_strings(self) -> None:
        """Reason codes reach logs as their string values, not enum reprs."""
        with structlog.testing.capture_logs() as logs:
            Emitter(CollectorRegistry()).emit(
                PredictionFailed(model="m", reason=Reason.LOAD_ERROR, error_type="X", duration=0)
            )
        assert logs[0]["reason"] == "load_error"
        assert type(logs[0]["reason"]) is str


class TestHookConfiguration:
    def test_defaults_are_prometheus_and_structlog(self) -> None:
        """Without configuration, events go to Prometheus and structlog."""
        assert get_on_event_hooks() == (PrometheusOnEventHook, StructlogOnEventHook)

    def test_hooks_can_be_replaced_and_removed(self, registry: CollectorRegistry) -> None:
        """An empty hook list turns instrumentation off; None restores the defaults."""
        set_on_event_hooks([])
        try:
            Breaker("quiet", registry=registry)
        finally:
            set_on_event_hooks(None)
        assert sample(registry, "circuit_breaker_rejections_total", breaker="quiet") is None
        Breaker("loud", registry=registry)
        assert sample(registry, "circuit_breaker_rejections_total", breaker="loud") == 0.0

    def test_capture_events_restores_previous_hooks(self) -> None:
        """capture_events records events and puts the previous hooks back afterwards."""
        before = get_on_event_hooks()
        with capture_events() as events:
            Breaker("b", registry=CollectorRegistry())
        assert [e.name for e in events] == ["clarity_resilience.breaker_registered"]
        assert get_on_event_hooks() == before

    def test_existing_emitters_notice_new_hooks(self) -> None:
        """Changing hooks applies to breakers created before the change."""
        breaker = Breaker("b", fail_max=1, registry=CollectorRegistry())
        seen: list[Event] = []
        set_on_event_hooks([seen.append])
        try:
            with pytest.raises(RuntimeError):
                breaker.call(boom)
        finally:
            set_on_event_hooks(None)
        assert [e.name for e in seen] == ["clarity_resilience.breaker_opened"]


class TestLibraryHygiene:
    def test_import_configures_nothing(self) -> None:
        """Importing the package registers no metric, configures no logging, starts no thread."""
        code = (
            "import logging, sys, threading\n"
            "import clarity_resilience, clarity_resilience.instrumentation\n"
            "assert threading.active_count() == 1, threading.enumerate()\n"
            "assert not logging.getLogger().handlers\n"
            "assert 'prometheus_client' not in sys.modules, 'prometheus imported eagerly'\n"
            "assert 'structlog' not in sys.modules, 'structlog imported eagerly'\n"
            "for name in ('fastapi', 'starlette', 'flask', 'werkzeug', 'httpx', 'numpy',\n"
            "             'safetensors', 'onnxruntime', 'torch', 'joblib', 'uvicorn', 'redis',\n"
            "             'pybreaker'):\n"
            "    assert name not in sys.modules, name\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


SAMPLE_EVENTS = [
    pytest.param(BreakerRegistered(breaker="b", state="closed"), "debug", id="breaker_registered"),
    pytest.param(
        BreakerOperatorAction(breaker="b", action="force_open", old_state="closed", reason="m"),
        "warning",
        id="breaker_operator_action",
    ),
    pytest.param(
        BreakerStateChanged(breaker="b", old_state="closed", new_state="open"),
        "warning",
        id="breaker_opened",
    ),
    pytest.param(
        BreakerStateChanged(breaker="b", old_state="open", new_state="half-open"),
        "warning",
        id="breaker_half_opened",
    ),
    pytest.param(
        BreakerStateChanged(breaker="b", old_state="half-open", new_state="closed"),
        "warning",
        id="breaker_closed",
    ),
    pytest.param(
        BreakerStorageFailed(breaker="b", problem="timeout", error_type="T", detail="d"),
        "error",
        id="breaker_storage_failed",
    ),
    pytest.param(
        CallRejected(breaker="b", state="open", retry_after=1.0), "warning", id="call_rejected"
    ),
    pytest.param(ModelRegistered(model="m"), "debug", id="model_registered"),
    pytest.param(PredictionSucceeded(model="m", duration=0.1), "debug", id="prediction_succeeded"),
    pytest.param(
        PredictionFailed(model="m", reason=Reason.TIMEOUT, error_type="E", duration=0.1),
        "error",
        id="prediction_failed",
    ),
    pytest.param(
        IntegrityCheckPassed(model="m", path="p", size=1, duration=0.1),
        "info",
        id="integrity_check_passed",
    ),
    pytest.param(
        IntegrityCheckFailed(
            model="m",
            path="p",
            reason=Reason.CHECKSUM_MISMATCH,
            error_type="E",
            detail="d",
            duration=0.1,
        ),
        "error",
        id="integrity_check_failed",
    ),
    pytest.param(
        ModelLoaded(model="m", sha256="0" * 64, version=None, duration=0.1),
        "info",
        id="model_loaded",
    ),
    pytest.param(
        ModelLoadFailed(
            model="m", reason=Reason.LOAD_ERROR, error_type="E", detail="d", duration=0.1
        ),
        "error",
        id="model_load_failed",
    ),
    pytest.param(
        ReloadPromoted(model="m", old_sha256=None, new_sha256="0" * 64, version=None),
        "info",
        id="reload_promoted",
    ),
    pytest.param(
        ReloadRefused(model="m", reason=Reason.CHECKSUM_MISMATCH, serving_sha256=None),
        "error",
        id="reload_refused",
    ),
]


def _event_classes() -> set[type[Event]]:
    found: set[type[Event]] = set()
    todo = [Event]
    while todo:
        for sub in todo.pop().__subclasses__():
            # dataclass(slots=True) leaves the class it replaced among the subclasses:
            # count only the class its module actually exports.
            module = sys.modules[sub.__module__]
            if sub.__module__.startswith("clarity_resilience.") and sub not in found:
                todo.append(sub)
                if getattr(module, sub.__name__, None) is sub:
                    found.add(sub)
    return found


class TestEventLevels:
    def test_every_event_class_has_a_pinned_level(self) -> None:
        """Each event class of the library appears in the level table below."""
        pinned = {type(p.values[0]) for p in SAMPLE_EVENTS}
        assert _event_classes() == pinned

    @pytest.mark.parametrize(("event", "level"), SAMPLE_EVENTS)
    def test_structlog_level(self, event: Event, level: str) -> None:
        """Failures and denials log at error/warning, successes at info/debug, as documented."""
        hook = StructlogOnEventHook.bind(None)
        with structlog.testing.capture_logs() as logs:
            hook(event)
        assert [(e["event"], e["log_level"]) for e in logs] == [(event.name, level)]

    @pytest.mark.parametrize(("event", "level"), SAMPLE_EVENTS)
    def test_stdlib_level(
        self,
        event: Event,
        level: str,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Routed to stdlib logging (structlog unconfigured), each event keeps its level."""
        monkeypatch.setattr(structlog, "is_configured", lambda: False)
        hook = StructlogHook()
        with caplog.at_level(logging.DEBUG, logger="clarity_resilience"):
            hook(event)
        assert [(r.name, r.levelname.lower()) for r in caplog.records] == [
            ("clarity_resilience", level)
        ]
        record = caplog.records[0]
        assert record.getMessage().startswith(event.name + " ")
        assert record.clarity_event == event.name  # type: ignore[attr-defined]
        assert record.clarity_fields == event.fields()  # type: ignore[attr-defined]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )


OPEN_A_BREAKER = (
    "import clarity_resilience as cr\n"
    "b = cr.Breaker('x', fail_max=1)\n"
    "try:\n"
    "    b.call(lambda: 1 / 0)\n"
    "except ZeroDivisionError:\n"
    "    pass\n"
)


class TestLogRouting:
    def test_unconfigured_structlog_writes_nothing_to_stdout(self) -> None:
        """Without structlog configured, stdout stays clean and a failure reaches stderr."""
        result = _run(OPEN_A_BREAKER)
        assert result.stdout == ""
        assert "clarity_resilience.breaker_opened" in result.stderr
        assert "breaker='x'" in result.stderr
        assert "breaker_registered" not in result.stderr  # debug: below logging's last resort

    def test_application_logging_config_applies(self) -> None:
        """With structlog unconfigured, the app's logging configuration receives every event."""
        result = _run(
            "import logging, sys\n"
            "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(levelname)s "
            "%(name)s %(message)s')\n" + OPEN_A_BREAKER
        )
        lines = result.stdout.splitlines()
        assert any(
            line.startswith("DEBUG clarity_resilience clarity_resilience.breaker_registered")
            for line in lines
        )
        assert any(
            line.startswith("WARNING clarity_resilience clarity_resilience.breaker_opened")
            for line in lines
        )

    def test_configured_structlog_receives_everything(self) -> None:
        """A structlog configuration gets every event, debug included, and logging gets none."""
        result = _run(
            "import logging, sys, structlog\n"
            "structlog.configure(processors=[structlog.processors.add_log_level,\n"
            "    structlog.processors.JSONRenderer()],\n"
            "    logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
            "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n" + OPEN_A_BREAKER
        )
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(e["event"], e["level"]) for e in events] == [
            ("clarity_resilience.breaker_registered", "debug"),
            ("clarity_resilience.breaker_opened", "warning"),
        ]
        assert "clarity_resilience" not in result.stderr


class TestModuleStructure:
    def test_instrumentation_has_no_import_cycle(self) -> None:
        """No instrumentation module imports one that (directly or not) imports it back."""
        package = pathlib.Path(instrumentation.__file__).parent
        graph: dict[str, set[str]] = {}
        for path in package.glob("*.py"):
            imports: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    if node.module:
                        imports.add(node.module.split(".")[0])
                    else:
                        imports.update(alias.name for alias in node.names)
            graph[path.stem] = imports
        graph.pop("__init__")  # the package re-exports everything; nothing imports it back

        def reaches(start: str, goal: str, seen: set[str]) -> bool:
            for nxt in graph.get(start, ()):
                if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                    return True
            return False

        cyclic = sorted(module for module in graph if reaches(module, module, set()))
        assert cyclic == []
        assert "_prometheus" in graph["_hooks"]  # the graph was read


class TestRejectionDelivery:
    def test_user_hooks_get_every_rejection_event(
        self, registry: CollectorRegistry, clock: time_machine.Traveller
    ) -> None:
        """Beside the built-in fast paths, a user hook receives each rejection as an event."""
        breaker = Breaker("b", fail_max=1, registry=registry)
        with pytest.raises(RuntimeError):
            breaker.call(boom)
        with capture_events(keep_hooks=True) as events, structlog.testing.capture_logs() as logs:
            for _ in range(12):
                with pytest.raises(CircuitOpenError):
                    breaker.call(lambda: None)
        rejected = [e for e in events if isinstance(e, CallRejected)]
        assert [e.rejected_since_open for e in rejected] == list(range(1, 13))
        assert {(e.breaker, e.state) for e in rejected} == {("b", "open")}
        assert sample(registry, "circuit_breaker_rejections_total", breaker="b") == 12.0
        logged = [e["rejected_since_open"] for e in logs if e["event"].endswith("call_rejected")]
        assert logged == [1, 10]
