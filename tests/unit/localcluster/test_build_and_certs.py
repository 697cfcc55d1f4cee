"""Pure parts of the local control plane tool: build inputs and certificates."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from modeldeploy_localcluster import certs
from modeldeploy_localcluster.build import (
    kubernetes_ldflags,
    kubernetes_staging_modules,
    kubernetes_wrapper_go_mod,
)
from modeldeploy_localcluster.cluster import kubeconfig_document, node_manifest

PUBLISHED_GO_MOD = """
module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
\tk8s.io/utils v0.0.0-20251002143259-bc988d571ff4
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/example/other => github.com/example/other v1.2.3
)
"""


def test_staging_modules_are_exactly_the_local_replacements() -> None:
    assert kubernetes_staging_modules(PUBLISHED_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]


def test_wrapper_go_mod_pins_staging_modules_to_the_matching_v0_release() -> None:
    go_mod = kubernetes_wrapper_go_mod("v1.36.3", ["k8s.io/api", "k8s.io/client-go"])
    assert "require k8s.io/kubernetes v1.36.3" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.36.3\n" in go_mod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n" in go_mod


def test_ldflags_stamp_the_version_in_both_version_packages() -> None:
    flags = kubernetes_ldflags("v1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags


def test_certificates_carry_key_identifiers_and_the_expected_names(tmp_path: Path) -> None:
    paths = certs.generate(tmp_path)
    server = x509.load_pem_x509_certificate(paths.apiserver_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(paths.admin_cert.read_bytes())
    for leaf in (server, admin):
        leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        leaf.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.96.0.1"}
    organizations = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]
    # Python's own TLS stack must accept the chain (strict about key identifiers since 3.13).
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    context.load_cert_chain(str(paths.admin_cert), str(paths.admin_key))


def test_kubeconfig_points_at_the_server_with_the_admin_identity(tmp_path: Path) -> None:
    paths = certs.generate(tmp_path)
    document = kubeconfig_document("https://127.0.0.1:6443", paths)
    assert document["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert document["users"][0]["user"]["client-certificate"] == str(paths.admin_cert)
    assert document["current-context"] == "local"


def test_the_fake_node_is_adopted_by_kwok_and_schedulable() -> None:
    node = node_manifest()
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert "taints" not in node.get("spec", {})
    assert int(node["status"]["allocatable"]["pods"]) >= 500
