"""Pure parts of the Gateway on the real node: Traefik's wrapper module, its RBAC and its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modeldeploy_localcluster.build import BuildError, go_mod_directives, wrapper_go_mod
from modeldeploy_localcluster.cluster import ClusterError
from modeldeploy_localcluster.gateway import NAMESPACE, documented_rules, rbac_objects, static_config
from modeldeploy_localcluster.node import NODE_IP

PUBLISHED_GO_MOD = """module github.com/example/proxy/v3

go 1.25.0

require (
\tgithub.com/gorilla/mux v1.8.1
\tk8s.io/client-go v0.34.3
)

replace github.com/single/line => github.com/fork/line v0.1.0 // a fork

// Forks
replace (
\tgithub.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.2020
\tgithub.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
)

exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible
"""


def test_directives_are_read_from_single_lines_and_blocks_without_comments() -> None:
    assert go_mod_directives(PUBLISHED_GO_MOD, "replace") == [
        "github.com/single/line => github.com/fork/line v0.1.0",
        "github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.2020",
        "github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59",
    ]
    assert go_mod_directives(PUBLISHED_GO_MOD, "exclude") == [
        "github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible"
    ]
    # `require` lines are not replacements, and a missing verb is no directive.
    assert go_mod_directives(PUBLISHED_GO_MOD, "retract") == []


def test_wrapper_repeats_the_replacements_and_exclusions_of_the_module_it_builds() -> None:
    go_mod = wrapper_go_mod("proxy", "github.com/example/proxy/v3", "v3.6.12", PUBLISHED_GO_MOD)
    assert go_mod.startswith("module modeldeploy.invalid/build/proxy\n")
    assert "require github.com/example/proxy/v3 v3.6.12\n" in go_mod
    assert (
        "\tgithub.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59\n" in go_mod
    )
    assert "\tgithub.com/single/line => github.com/fork/line v0.1.0\n" in go_mod
    assert "exclude (\n\tgithub.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible\n)" in go_mod
    assert "//" not in go_mod


def test_a_replacement_by_a_local_folder_is_refused_naming_it() -> None:
    published = PUBLISHED_GO_MOD + "replace github.com/example/ext => ./pkg/ext\n"
    with pytest.raises(BuildError, match=r"github.com/example/ext => ./pkg/ext"):
        wrapper_go_mod("proxy", "github.com/example/proxy/v3", "v3.7.0", published)


RBAC_DOCUMENT = """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: gateway-role
rules:
  - apiGroups: [gateway.networking.k8s.io]
    resources: [gateways, httproutes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: gateway-controller
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gateway-role}
subjects: [{kind: ServiceAccount, name: traefik-controller, namespace: default}]
"""


def test_the_documented_role_is_bound_to_the_gateways_own_service_account() -> None:
    rules = documented_rules(RBAC_DOCUMENT)
    assert rules == [
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["gateways", "httproutes"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    objects = {obj["kind"]: obj for obj in rbac_objects(rules)}
    assert objects["ClusterRole"]["rules"] == rules
    binding = objects["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objects["ClusterRole"]["metadata"]["name"]
    account = objects["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert account["namespace"] == objects["Namespace"]["metadata"]["name"]


def test_a_document_without_exactly_one_cluster_role_is_an_error() -> None:
    with pytest.raises(ClusterError, match="found 0"):
        documented_rules(RBAC_DOCUMENT.split("---")[1])


def test_static_config_listens_on_the_node_address_and_enables_only_the_gateway_provider() -> None:
    config = static_config(
        "https://10.213.0.1:6443", Path("/pki/ca.crt"), "TOKEN", 8000, 8081, Path("/logs/access.log")
    )
    # A Gateway listener is matched to the entry point with the same port.
    assert config["entryPoints"]["web"]["address"] == f"{NODE_IP}:8000"
    assert config["entryPoints"]["traefik"]["address"] == f"{NODE_IP}:8081"
    assert list(config["providers"]) == ["kubernetesGateway"]
    provider = config["providers"]["kubernetesGateway"]
    assert (provider["endpoint"], provider["token"], provider["certAuthFilePath"]) == (
        "https://10.213.0.1:6443",
        "TOKEN",
        "/pki/ca.crt",
    )
    # Only failed requests are logged, so a test can say which backend each one went to.
    assert config["accessLog"]["filters"] == {"statusCodes": ["500-599"]}
    assert config["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert yaml.safe_load(yaml.safe_dump(config)) == config
