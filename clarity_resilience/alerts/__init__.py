"""Prometheus alerting rules for the metrics of the telemetry contract.

The rules ship inside the package so they always match the metrics of the installed
version. Copy them into your Prometheus configuration::

    python -c "import clarity_resilience.alerts as a; print(a.rules_text())" > cr.rules.yml

This module is not imported by :mod:`clarity_resilience`; it reads one file and nothing
else. See ``docs/alerts.md`` for what each alert means and what to do when it fires.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import re

__all__ = ["RULES_FILE", "rules_path", "rules_text"]

#: The name of the packaged rules file.
RULES_FILE = "clarity-resilience.rules.yml"

# The metric names of the telemetry contract (histograms with their series suffixes):
# exactly the names that prometheus_hook(namespace=...) prefixes.
_METRIC_NAME = re.compile(
    r"(?<![\w:])("
    r"(?:prediction_success_total|prediction_failure_total|circuit_breaker_state"
    r"|circuit_breaker_transitions_total|circuit_breaker_rejections_total"
    r"|circuit_breaker_storage_failures_total"
    r"|model_integrity_failures_total"
    r"|(?:model_load|checksum_verification)_duration_seconds(?:_bucket|_count|_sum)?)"
    r")(?![\w:])"
)
_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def rules_path() -> pathlib.Path:
    """Return the path of the packaged rules file.

    Raises:
        RuntimeError: The package is not installed as files on disk (e.g. zipped);
            use :func:`rules_text` instead.
    """
    resource = importlib.resources.files(__name__).joinpath(RULES_FILE)
    if isinstance(resource, pathlib.Path):
        return resource
    raise RuntimeError(f"{RULES_FILE} is not a file on disk here; use rules_text() to read it")


def rules_text(namespace: str = "") -> str:
    """Return the rules file as text, ready to save as a Prometheus rule file.

    Args:
        namespace: The prefix your metrics carry, as given to
            ``prometheus_hook(namespace=...)``; every metric name in the rules becomes
            ``<namespace>_<name>``. Empty (the default) leaves the names unchanged.

    Raises:
        ValueError: ``namespace`` is not a valid Prometheus metric name prefix.
    """
    text = importlib.resources.files(__name__).joinpath(RULES_FILE).read_text(encoding="utf-8")
    if not namespace:
        return text
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}")
    return _METRIC_NAME.sub(lambda match: f"{namespace}_{match.group(1)}", text)
