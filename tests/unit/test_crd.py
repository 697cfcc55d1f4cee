"""The generated CRD: committed copies are current, the schema is structural, CEL rules are sane.

The API server is the real judge of the CRD (the integration tests apply it and the
invalid examples); these tests catch, without a cluster, the mistakes that would make
it reject the CRD or give a user an error message that does not name the field.
Regenerate the CRD with `python -m modeldeploy_operator.crdgen`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from modeldeploy_operator.crdgen import CRD_PATHS, build_crd, render_crd, structural_schema

ROOT = Path(__file__).parents[2]
CRD = build_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
# Keywords the API server accepts in a structural schema (and that this generator may emit).
ALLOWED_KEYWORDS = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "additionalProperties",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its field path as the API server writes it (spec.a.b, spec.list[])."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}[*]")


def rules() -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    for path, node in nodes(SCHEMA):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule


@pytest.mark.parametrize("relative", CRD_PATHS, ids=str)
def test_committed_crd_is_current(relative: Path) -> None:
    committed = (ROOT / relative).read_text(encoding="utf-8")
    assert committed == render_crd(), "stale CRD: run `python -m modeldeploy_operator.crdgen`"


def test_crd_identity_and_subresources() -> None:
    assert CRD["metadata"]["name"] == "modeldeployments.modeldeploy.io"
    names = CRD["spec"]["names"]
    assert names["shortNames"] == ["md"]
    assert names["categories"] == ["modeldeploy"]
    assert VERSION["name"] == "v1alpha1"
    assert VERSION["subresources"]["status"] == {}
    scale = VERSION["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def lookup(path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_scale_subresource_paths_exist_with_the_right_types() -> None:
    scale = VERSION["subresources"]["scale"]
    assert lookup(scale["specReplicasPath"])["type"] == "integer"
    assert lookup(scale["statusReplicasPath"])["type"] == "integer"
    assert lookup(scale["labelSelectorPath"])["type"] == "string"


def test_printer_columns_point_at_existing_fields() -> None:
    columns = {column["name"]: column for column in VERSION["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Stable", "Canary", "Weight", "Phase", "Model", "URL", "Age"]
    # `kubectl get md` shows the rollout without -o wide; the spec's URI and the URL are wide only.
    assert [name for name, column in columns.items() if column.get("priority")] == ["Model", "URL"]
    for column in columns.values():
        path = column["jsonPath"]
        if path.startswith(".metadata") or "[?" in path:
            continue
        assert lookup(path)["type"] == column["type"], path


def test_schema_is_structural() -> None:
    for path, node in nodes(SCHEMA):
        unknown = set(node) - ALLOWED_KEYWORDS
        assert not unknown, f"{path}: {unknown}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf outside int-or-string"
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        if "default" in node:
            assert node["default"] is not None, path
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in item.get("required", []), f"{path}: map key {key} must be required"


def test_every_field_is_described() -> None:
    undescribed = [
        path
        for path, node in nodes(SCHEMA)
        if path and not path.endswith(("[]", "[*]")) and path not in ("apiVersion", "kind", "metadata")
        if not node.get("description")
    ]
    assert undescribed == []


def test_strings_and_lists_under_cel_rules_are_bounded() -> None:
    """The API server estimates each rule's cost; unbounded strings or lists make it refuse the CRD."""
    for path, node, rule in rules():
        if node.get("type") == "string":
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
            if node["items"].get("type") == "object":
                for name, child in node["items"]["properties"].items():
                    if child.get("type") == "string" and f".{name}" in rule["rule"]:
                        assert "maxLength" in child, f"{path}[].{name}"


def test_cel_messages_name_the_field() -> None:
    found = list(rules())
    assert len(found) >= 10
    for path, _node, rule in found:
        message = rule["message"]
        assert "\n" not in message
        field = message.split(" ")[0]
        expected = path if path else "metadata.name"
        assert field.startswith(expected), f"{path}: message should start with the field: {message}"
        if "fieldPath" in rule:
            assert field == expected + rule["fieldPath"], (
                f"{path}: message names another field than fieldPath"
            )


def test_metadata_name_is_restricted_by_schema_not_by_cel() -> None:
    """A root rule on metadata.name would be costed as if the name were megabytes long."""
    assert "x-kubernetes-validations" not in SCHEMA
    assert set(SCHEMA["properties"]["metadata"]["properties"]) == {"name"}
    name = SCHEMA["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] + len("-canary") <= 63


def test_cel_field_paths_exist() -> None:
    for path, node, rule in rules():
        if "fieldPath" in rule:
            assert re.fullmatch(r"(\.[A-Za-z]\w*)+", rule["fieldPath"])
            assert rule["fieldPath"].lstrip(".").split(".")[0] in node["properties"], path


def test_cel_rules_only_read_fields_that_exist_and_guard_optional_ones() -> None:
    for path, node, rule in rules():
        text = rule["rule"]
        assert text.count("(") == text.count(")"), text
        assert text.count("'") % 2 == 0 and text.count('"') % 2 == 0, text
        properties = node.get("properties", {})
        for name in re.findall(r"self\.([A-Za-z_]\w*)\b(?!\s*\()", text):
            assert name in properties, f"{path}: rule reads self.{name}, which the schema lacks"
            always_present = name in node.get("required", []) or "default" in properties[name]
            if not always_present:
                assert f"has(self.{name})" in text, f"{path}: self.{name} may be absent, guard it with has()"


class _Example(BaseModel):
    count: int | None = Field(default=None, gt=0)
    ratio: float = Field(default=0.5, lt=1)
    size: int | str = Field(default=1, union_mode="left_to_right")
    labels: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["a"] = "a"


def test_structural_schema_rewrites_pydantic_forms() -> None:
    schema = structural_schema(_Example.model_json_schema())
    properties = schema["properties"]
    assert properties["count"] == {"type": "integer", "exclusiveMinimum": True, "minimum": 0}
    assert properties["ratio"] == {"type": "number", "default": 0.5, "exclusiveMaximum": True, "maximum": 1}
    assert properties["size"]["x-kubernetes-int-or-string"] is True
    assert properties["labels"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert properties["mode"]["enum"] == ["a"]
    assert "title" not in schema


def test_structural_schema_refuses_unions_the_api_server_cannot_express() -> None:
    class Mixed(BaseModel):
        value: int | list[str]

    with pytest.raises(ValueError, match="union"):
        structural_schema(Mixed.model_json_schema())


def test_rendered_crd_is_one_yaml_document_with_a_header() -> None:
    text = render_crd()
    assert text.startswith("# Generated by")
    assert "&id" not in text, "a shared dict became a YAML anchor, which is hard to review"
    assert yaml.safe_load(text) == CRD
