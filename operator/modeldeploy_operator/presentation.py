"""Text views of ModelDeployments for the `modeldeploy` command: pure functions of their bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

PROGRESS_BAR_WIDTH = 20


def _condition(body: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in body.get("status", {}).get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "-"
    seconds = int((now - datetime.fromisoformat(timestamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _model(model: Mapping[str, Any] | None) -> str:
    if not model:
        return "-"
    version = model.get("version")
    return f"{model.get('uri')} ({version})" if version else str(model.get("uri"))


def progress_bar(weight: float, width: int = PROGRESS_BAR_WIDTH) -> str:
    filled = round(max(0.0, min(100.0, weight)) / 100 * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def summary_table(bodies: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """One line per ModelDeployment, like `kubectl get` but with the rollout's progress."""
    rows = []
    for body in bodies:
        status = body.get("status", {})
        canary = status.get("canary")
        rows.append(
            [
                body["metadata"].get("namespace", ""),
                body["metadata"]["name"],
                _condition(body, "Ready").get("status", "Unknown"),
                status.get("phase", "-"),
                (status.get("stable") or {}).get("version") or "-",
                (canary.get("version") or canary.get("uri")) if canary else "-",
                f"{canary.get('weight', 0)}%" if canary else "-",
                _age(body["metadata"].get("creationTimestamp"), now),
            ]
        )
    return _table(["NAMESPACE", "NAME", "READY", "PHASE", "STABLE", "CANARY", "WEIGHT", "AGE"], rows)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _interval(check: Mapping[str, Any]) -> str:
    if check.get("effect") is None:
        return "-"
    low, high = check.get("effectLow"), check.get("effectHigh")
    return f"{_number(check['effect'])} [{_number(low)}, {_number(high)}]"


def _evidence(check: Mapping[str, Any]) -> str:
    if check.get("pValue") is None:
        return "-"
    return f"{check['pValue']:.2g}/{_number(check.get('alpha'))}"


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    """The last result of each check; with the statistical method also the test, both variants' samples,
    the effect with its interval against the tolerance, and the p-value against the test's alpha."""
    if not any(check.get("test") for check in checks):
        return _table(
            ["CHECK", "VERDICT", "CANARY", "STABLE", "SAMPLES", "WHY"],
            [
                [
                    check["name"],
                    check["verdict"],
                    _number(check.get("value")),
                    _number(check.get("baseline")),
                    _number(check.get("samples")),
                    check.get("message", ""),
                ]
                for check in checks
            ],
        )
    return _table(
        [
            "CHECK",
            "VERDICT",
            "CANARY",
            "STABLE",
            "SAMPLES",
            "TEST",
            "EFFECT [INTERVAL]",
            "TOLERANCE",
            "P/ALPHA",
            "WHY",
        ],
        [
            [
                check["name"],
                check["verdict"],
                _number(check.get("value")),
                _number(check.get("baseline")),
                f"{_number(check.get('samples'))}/{_number(check.get('stableSamples'))}",
                check.get("test") or "-",
                _interval(check),
                _number(check.get("tolerance")),
                _evidence(check),
                check.get("message", ""),
            ]
            for check in checks
        ],
    )


def _indented_checks(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The checks table under a blank line, indented into `detail`."""
    return ["", *("  " + line for line in checks_table(checks).splitlines())]


def detail(body: Mapping[str, Any], now: datetime) -> str:
    """Everything a person needs to know about one ModelDeployment and its rollout."""
    metadata, status = body["metadata"], body.get("status", {})
    ready, stalled = _condition(body, "Ready"), _condition(body, "Stalled")
    lines = [
        f"{metadata.get('namespace', '')}/{metadata['name']}: {status.get('phase', 'Pending')}",
        f"  Ready:    {ready.get('status', 'Unknown')}  {ready.get('message', '')}".rstrip(),
    ]
    if stalled.get("status") == "True":
        lines.append(f"  Stalled:  {stalled.get('reason', '')}: {stalled.get('message', '')}")
    lines.append(f"  Stable:   {_model(status.get('stable'))}")
    lines.append(f"  Spec:     {_model(body.get('spec', {}).get('model'))}")
    canary = status.get("canary")
    if canary:
        steps = body.get("spec", {}).get("rollout", {}).get("steps", [])
        weight = canary.get("weight", 0)
        effective = canary.get("effectiveWeight")
        shown = f"{weight}%" + (f" (effective {effective:.1f}%)" if effective is not None else "")
        lines.append(f"  Canary:   {_model(canary)}")
        lines.append(
            f"  Progress: {progress_bar(weight)} {shown}, step {canary.get('step', 0) + 1}/{len(steps) or '?'}"
            f", step began {_age(canary.get('stepStartedAt'), now)} ago"
            + (", PAUSED" if canary.get("pausedAt") else "")
        )
        if canary.get("analysisEndsAt"):
            lines.append(
                f"  Window:   waits for requests, from {canary.get('analysisStartedAt', '-')}"
                f" to {canary['analysisEndsAt']}"
            )
        checks = canary.get("checks", [])
        if checks:
            lines += _indented_checks(checks)
    history = status.get("history") or []
    if not canary and history and history[0].get("checks"):
        last = history[0]
        lines.append(
            f"  Last rollout: {_model(last)} {last.get('outcome', '')} ({last.get('reason', '')})"
            f" {_age(last.get('finishedAt'), now)} ago, on these checks:"
        )
        lines += _indented_checks(last["checks"])
    rejected = status.get("rejected")
    if rejected:
        lines.append(
            f"  Rejected: {_model(rejected)}: {rejected.get('reason')}: {rejected.get('message', '')}"
        )
    if status.get("url"):
        lines.append(f"  URL:      {status['url']}")
    return "\n".join(lines)


def history_table(body: Mapping[str, Any]) -> str:
    entries = body.get("status", {}).get("history", [])
    if not entries:
        return "no finished rollouts"
    return _table(
        ["FINISHED", "MODEL", "OUTCOME", "REASON", "MESSAGE"],
        [
            [
                entry.get("finishedAt", ""),
                _model(entry),
                entry.get("outcome", ""),
                entry.get("reason", ""),
                entry.get("message", ""),
            ]
            for entry in entries
        ],
    )
