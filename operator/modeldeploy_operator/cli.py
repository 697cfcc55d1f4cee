"""`modeldeploy-operator`: runs the kopf operator with the settings from the environment."""

from __future__ import annotations

import argparse

import kopf

from modeldeploy_operator import handlers  # noqa: F401 - importing registers the kopf handlers
from modeldeploy_operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modeldeploy-operator", description=__doc__)
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint (default: %(default)s)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every handler run")
    args = parser.parse_args(argv)
    settings = OperatorSettings()
    kopf.configure(
        verbose=args.verbose,
        log_prefix=True,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=args.liveness,
        standalone=True,
    )
