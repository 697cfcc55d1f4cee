"""The registry of watched kinds and the chart's RBAC agree: every kind the operator watches it may
list and watch, and every kind it applies it may create, patch and delete (GC)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modeldeploy_operator.kinds import WATCHED_KINDS, WatchedKind

RULES = Path(__file__).resolve().parents[2] / "charts" / "modeldeploy" / "files" / "operator-rules.yaml"


def granted(kind: WatchedKind) -> set[str]:
    verbs: set[str] = set()
    for rule in yaml.safe_load(RULES.read_text()):
        if kind.group in rule["apiGroups"] and kind.plural in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


@pytest.mark.parametrize("kind", WATCHED_KINDS, ids=lambda kind: kind.kind)
def test_the_chart_lets_the_operator_do_what_the_registry_says(kind: WatchedKind) -> None:
    needed = {"get", "list", "watch"}
    if kind.applied:
        needed |= {"create", "patch", "delete"}
    assert needed <= granted(kind), f"{RULES.name} misses {sorted(needed - granted(kind))} on {kind.plural}"
