"""The generated resource reference: the committed copy is current and covers every field.

Regenerate it with `python -m modeldeploy_operator.docgen`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modeldeploy_operator.crdgen import build_crd
from modeldeploy_operator.docgen import REFERENCE_PATH, render_reference

ROOT = Path(__file__).parents[2]
REFERENCE = render_reference()
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def row(path: str) -> str:
    """The table row of one field, found by its path."""
    rows = [line for line in REFERENCE.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(rows) == 1, f"{path}: {len(rows)} rows"
    return rows[0]


def field_paths(node: dict[str, Any], path: str) -> Iterator[str]:
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}"
        yield child_path
        yield from field_paths(child, child_path)
        if "items" in child:
            yield from field_paths(child["items"], f"{child_path}[]")


def test_committed_reference_is_current() -> None:
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == REFERENCE, "stale docs/reference.md: run `python -m modeldeploy_operator.docgen`"


def test_every_field_of_spec_and_status_has_a_row() -> None:
    for root in ("spec", "status"):
        for path in field_paths(SCHEMA["properties"][root], root):
            row(path)


def test_a_field_shows_its_type_default_bounds_and_description() -> None:
    step_duration = row("spec.rollout.stepDuration")
    assert "| `string` | `5m` |" in step_duration
    assert "How long each step lasts; its analysis covers this window." in step_duration

    steps = row("spec.rollout.steps")
    assert "| `[]integer` | `[10, 50]` |" in steps
    assert "1 to 20 items. Each item: from 1 to 99." in steps
    assert "Rule: spec.rollout.steps must be strictly increasing." in steps

    assert "One of `hold`, `fail`." in row("spec.rollout.analysis.onNoData")
    assert "Greater than 0 and less than 1." in row("spec.rollout.analysis.latency.quantile")
    assert "| required |" in row("spec.model.uri")
    assert "| required |" in row("spec.autoscaling.maxReplicas")


def test_nested_objects_link_to_their_own_section_with_the_class_docstring() -> None:
    assert "see [spec.rollout.analysis.custom[]](#specrolloutanalysiscustom)" in row(
        "spec.rollout.analysis.custom"
    )
    section = REFERENCE.split("## spec.rollout.analysis.custom[]\n", 1)[1].split("\n## ", 1)[0]
    assert "The query may use {{name}}, {{namespace}}, {{variant}} and {{window}}" in section
    assert "- spec.rollout.analysis.custom[].min or max must be set" in section


def test_every_link_points_at_a_heading() -> None:
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", line[3:].lower()).replace(" ", "-")
        for line in REFERENCE.splitlines()
        if line.startswith("## ")
    }
    targets = set(re.findall(r"\]\(#([^)]+)\)", REFERENCE))
    assert targets
    assert targets <= headings


def test_pipes_inside_cells_are_escaped() -> None:
    for line in REFERENCE.splitlines():
        if line.startswith("| `"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5, line
