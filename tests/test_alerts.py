"""Tests for clarity_resilience.alerts: the packaged Prometheus rules, proven with promtool."""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import requirements
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import clarity_resilience as cr
import clarity_resilience.alerts
from clarity_resilience.alerts import RULES_FILE, rules_path, rules_text
from clarity_resilience.instrumentation import (
    get_on_event_hooks,
    prometheus_hook,
    set_on_event_hooks,
)

TESTS = pathlib.Path(__file__).resolve().parent
ALERT_TESTS = sorted((TESTS / "alerts").glob("*.yml"))
DOCS = TESTS.parent / "docs" / "alerts.md"
# How every file in tests/alerts names the rules, so `promtool test rules` runs from a checkout.
RELATIVE_RULES = "../../clarity_resilience/alerts/clarity-resilience.rules.yml"
PROMTOOL_TIMEOUT = 60

EXPECTED_ALERTS = {
    "ModelIntegrityFailure": {"critical"},
    "CircuitBreakerOpen": {"warning", "critical"},
    "CircuitBreakerFlapping": {"warning"},
    "CircuitBreakerStorageFailing": {"warning"},
    "PredictionFailureRatioHigh": {"critical"},
    "ModelOverloaded": {"warning"},
    "ModelUnavailable": {"critical"},
    "ModelLoadSlow": {"warning"},
}
# The contract's metrics that the rules use (histograms by their _bucket series).
EXPECTED_METRICS = {
    "prediction_success_total",
    "prediction_failure_total",
    "circuit_breaker_state",
    "circuit_breaker_transitions_total",
    "circuit_breaker_storage_failures_total",
    "model_integrity_failures_total",
    "model_load_duration_seconds_bucket",
}


@pytest.fixture
def promtool() -> str:
    """Return the path of Prometheus' promtool."""
    return requirements.require_binary("promtool", "Debian: apt-get install prometheus")


@pytest.fixture
def yaml() -> ModuleType:
    """Return PyYAML, to read the rules the way Prometheus does."""
    try:
        return importlib.import_module("yaml")
    except ImportError:
        requirements.missing("PyYAML")


def run_promtool(promtool: str, *args: str, stdin: str | None = None) -> str:
    """Run promtool and return its combined output; fail the test on a non-zero exit."""
    result = subprocess.run(
        [promtool, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def load_rules(yaml: ModuleType, text: str | None = None) -> list[dict[str, Any]]:
    """Return the alerting rules of the packaged file (or of ``text``)."""
    document = yaml.safe_load(rules_text() if text is None else text)
    (group,) = document["groups"]
    assert group["name"] == "clarity-resilience"
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def metric_names(expr: str) -> set[str]:
    """Return the metric names that a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in {"and", "or", "unless", "bool"}:
            names.add(match.group())
    return names


def rules_metric_names(yaml: ModuleType, text: str | None = None) -> set[str]:
    """Return every metric name that the rules' expressions select."""
    return set().union(*(metric_names(rule["expr"]) for rule in load_rules(yaml, text)))


def sample_names(exposition: str) -> set[str]:
    """Return the sample names of a Prometheus text exposition."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def with_rules(
    test_file: pathlib.Path, rules: pathlib.Path, tmp_path: pathlib.Path
) -> pathlib.Path:
    """Copy a promtool test file into tmp_path, pointing it at ``rules``."""
    text = test_file.read_text(encoding="utf-8")
    assert RELATIVE_RULES in text
    copy = tmp_path / test_file.name
    copy.write_text(text.replace(RELATIVE_RULES, str(rules)), encoding="utf-8")
    return copy


@pytest.fixture
def restore_hooks() -> Iterator[None]:
    """Restore the event hooks that were configured before the test."""
    previous = get_on_event_hooks()
    try:
        yield
    finally:
        set_on_event_hooks(previous)


def drive_library(registry: CollectorRegistry, tmp_path: pathlib.Path) -> tuple[str, str]:
    """Record real telemetry; return the expositions before and after the failures.

    Before: a registered breaker ``m`` and one verified read of model ``m`` (every label
    set pre-initialised). After: the breaker opened by 5 failures and a checksum mismatch.
    """
    breaker = cr.Breaker("m", registry=registry)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    cr.read_verified(model, sha256=cr.sha256_file(model), model="m", registry=registry)
    before = generate_latest(registry).decode()

    def failing() -> None:
        raise RuntimeError("model server down")

    for _ in range(breaker.fail_max):
        with pytest.raises(RuntimeError):
            breaker.call(failing)
    assert breaker.state == "open"
    with pytest.raises(cr.ChecksumMismatchError):
        cr.read_verified(model, sha256="0" * 64, model="m", registry=registry)
    return before, generate_latest(registry).decode()


@pytest.fixture(params=[pytest.param("", id="plain"), pytest.param("svc", id="namespace")])
def namespace(request: pytest.FixtureRequest, restore_hooks: None) -> str:
    """Record metrics without, then with, a namespace prefix."""
    ns: str = request.param
    if ns:
        set_on_event_hooks([prometheus_hook(namespace=ns)])
    return ns


class TestRulesPath:
    def test_rules_path_is_the_packaged_file(self) -> None:
        """rules_path() names the rules file inside the installed package."""
        path = rules_path()
        assert path.name == RULES_FILE
        assert path.is_file()
        assert path.parent == pathlib.Path(clarity_resilience.alerts.__file__).parent

    def test_rules_text_is_the_file(self) -> None:
        """rules_text() returns the packaged file unchanged."""
        assert rules_text() == rules_path().read_text(encoding="utf-8")
        assert "alert: ModelIntegrityFailure" in rules_text()

    def test_namespace_prefixes_every_metric_name(self, yaml: ModuleType) -> None:
        """rules_text(namespace=...) prefixes every metric name and nothing else."""
        names = rules_metric_names(yaml, rules_text(namespace="svc"))
        assert names == {f"svc_{name}" for name in EXPECTED_METRICS}
        plain, prefixed = load_rules(yaml), load_rules(yaml, rules_text(namespace="svc"))
        assert [r["annotations"] for r in plain] == [r["annotations"] for r in prefixed]

    @pytest.mark.parametrize(
        "namespace",
        [
            pytest.param("1svc", id="leading-digit"),
            pytest.param("svc-a", id="dash"),
            pytest.param("svc a", id="space"),
            pytest.param("svc:", id="colon"),
        ],
    )
    def test_invalid_namespace_is_refused(self, namespace: str) -> None:
        """A namespace that cannot prefix a metric name raises ValueError."""
        with pytest.raises(ValueError, match="namespace"):
            rules_text(namespace=namespace)

    def test_package_root_does_not_import_alerts(self) -> None:
        """Importing clarity_resilience leaves the alerts module unloaded."""
        code = (
            "import sys, clarity_resilience; sys.exit('clarity_resilience.alerts' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr


class TestRulesFile:
    def test_promtool_accepts_the_rules(self, promtool: str) -> None:
        """promtool check rules finds every rule of the packaged file valid."""
        output = run_promtool(promtool, "check", "rules", str(rules_path()))
        assert "SUCCESS: 9 rules found" in output

    @pytest.mark.parametrize(
        ("alert", "severities"),
        [
            pytest.param(alert, severities, id=alert)
            for alert, severities in EXPECTED_ALERTS.items()
        ],
    )
    def test_alert_is_defined_and_documented(
        self, yaml: ModuleType, alert: str, severities: set[str]
    ) -> None:
        """Each alert exists with its severities, a summary, a description and a runbook."""
        rules = [rule for rule in load_rules(yaml) if rule.get("alert") == alert]
        assert {rule["labels"]["severity"] for rule in rules} == severities
        for rule in rules:
            annotations = rule["annotations"]
            assert annotations["summary"].strip()
            assert annotations["description"].strip()
            assert annotations["runbook"].endswith(f"/alerts/#{alert.lower()}")
        assert re.search(rf"^### {alert}$", DOCS.read_text(encoding="utf-8"), re.MULTILINE)

    def test_no_unexpected_alerts(self, yaml: ModuleType) -> None:
        """The rules define exactly the documented set of alerts, so none is left untested."""
        assert {rule["alert"] for rule in load_rules(yaml)} == set(EXPECTED_ALERTS)

    @pytest.mark.parametrize("alert", [pytest.param(alert, id=alert) for alert in EXPECTED_ALERTS])
    def test_alert_has_a_firing_and_a_quiet_promtool_case(
        self, yaml: ModuleType, alert: str
    ) -> None:
        """Each alert has promtool cases where it fires and where it stays quiet."""
        cases = [
            case
            for test_file in ALERT_TESTS
            for group in yaml.safe_load(test_file.read_text(encoding="utf-8"))["tests"]
            for case in group.get("alert_rule_test", [])
            if case["alertname"] == alert
        ]
        assert any(case["exp_alerts"] for case in cases), f"no case where {alert} fires"
        assert any(not case["exp_alerts"] for case in cases), f"no case where {alert} is quiet"

    @pytest.mark.parametrize(
        "test_file", [pytest.param(f, id=f.name.removesuffix(".test.yml")) for f in ALERT_TESTS]
    )
    def test_promtool_test_file_names_the_packaged_rules(self, test_file: pathlib.Path) -> None:
        """Each promtool test file loads the rules by a path that exists in the checkout."""
        assert (test_file.parent / RELATIVE_RULES).resolve().is_file()


class TestPromtoolUnitTests:
    @pytest.mark.parametrize(
        "test_file", [pytest.param(f, id=f.name.removesuffix(".test.yml")) for f in ALERT_TESTS]
    )
    def test_promtool_test_rules(
        self, promtool: str, test_file: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """The installed rules fire, and stay quiet, exactly as tests/alerts expects."""
        copy = with_rules(test_file, rules_path(), tmp_path)
        assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(copy))

    @pytest.mark.parametrize(
        "test_file", [pytest.param(f, id=f.name.removesuffix(".test.yml")) for f in ALERT_TESTS]
    )
    def test_namespaced_rules_pass_the_same_tests(
        self, promtool: str, test_file: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """rules_text(namespace=...) behaves the same on metrics that carry the prefix."""
        rules = tmp_path / "svc.rules.yml"
        rules.write_text(rules_text(namespace="svc"), encoding="utf-8")
        copy = with_rules(test_file, rules, tmp_path)
        text = copy.read_text(encoding="utf-8")
        copy.write_text(re.sub(r"series: '(?=\w)", "series: 'svc_", text), encoding="utf-8")
        assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(copy))

    def test_at_least_one_file_per_alert(self) -> None:
        """tests/alerts holds the promtool test files (a missing directory is a failure)."""
        assert len(ALERT_TESTS) >= len(EXPECTED_ALERTS)


class TestRealMetrics:
    def test_promtool_check_metrics_is_clean(
        self, promtool: str, registry: CollectorRegistry, tmp_path: pathlib.Path
    ) -> None:
        """The library's exposition, after an open breaker and a checksum mismatch, lints clean."""
        _, after = drive_library(registry, tmp_path)
        assert (
            registry.get_sample_value("circuit_breaker_state", {"breaker": "m", "state": "open"})
            == 1.0
        )
        assert (
            registry.get_sample_value(
                "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
            )
            == 1.0
        )
        assert run_promtool(promtool, "check", "metrics", stdin=after).strip() == ""

    def test_rules_select_only_exposed_metrics(
        self,
        yaml: ModuleType,
        registry: CollectorRegistry,
        tmp_path: pathlib.Path,
        namespace: str,
    ) -> None:
        """Every metric name in the rules is one that the library really exposes."""
        _, after = drive_library(registry, tmp_path)
        prefix = f"{namespace}_" if namespace else ""
        names = rules_metric_names(yaml, rules_text(namespace=namespace))
        assert names == {prefix + name for name in EXPECTED_METRICS}
        assert names <= sample_names(after)

    def test_real_failures_fire_the_right_alerts(
        self,
        promtool: str,
        registry: CollectorRegistry,
        tmp_path: pathlib.Path,
        namespace: str,
    ) -> None:
        """The library's own series fire the integrity and breaker alerts, and nothing else."""
        before, after = drive_library(registry, tmp_path)
        rules = tmp_path / "rules.yml"
        rules.write_text(rules_text(namespace=namespace), encoding="utf-8")
        prefix = f"{namespace}_" if namespace else ""
        wanted = {prefix + name for name in EXPECTED_METRICS}
        test_file = tmp_path / "real.test.json"
        test_file.write_text(
            json.dumps(
                {
                    "rule_files": [str(rules)],
                    "evaluation_interval": "1m",
                    "tests": [
                        {
                            "interval": "1m",
                            # 10 minutes of the pre-initialised state, then the failures.
                            "input_series": timeline(before, after, wanted),
                            "promql_expr_test": [
                                firing_alerts("9m", []),
                                firing_alerts(
                                    "12m",
                                    [
                                        'ALERTS{alertname="ModelIntegrityFailure",'
                                        ' alertstate="firing", job="svc", model="m",'
                                        ' reason="checksum_mismatch", severity="critical"}',
                                        'ALERTS{alertname="CircuitBreakerOpen",'
                                        ' alertstate="firing", breaker="m", job="svc",'
                                        ' severity="warning"}',
                                    ],
                                ),
                            ],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(test_file))


def timeline(before: str, after: str, wanted: set[str]) -> list[dict[str, str]]:
    """Return promtool input series: each sample at its ``before`` value, then ``after``."""

    def samples(exposition: str) -> dict[str, float]:
        return {
            sample.name
            + "{"
            + ",".join(
                f'{key}="{value}"'
                for key, value in sorted({**sample.labels, "job": "svc", "instance": "a"}.items())
            )
            + "}": sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name in wanted
        }

    old, new = samples(before), samples(after)
    assert old, "the pre-initialised exposition has none of the rules' metrics"
    return [
        {"series": series, "values": f"{old[series]:g}x10 {value:g}x20"}
        if series in old
        else {"series": series, "values": f"_x10 {value:g}x20"}
        for series, value in sorted(new.items())
    ]


def firing_alerts(eval_time: str, alerts: list[str]) -> dict[str, Any]:
    """Return a promql_expr_test expecting exactly ``alerts`` to be firing."""
    return {
        "expr": 'ALERTS{alertstate="firing"}',
        "eval_time": eval_time,
        "exp_samples": [{"labels": labels, "value": 1} for labels in alerts],
    }
