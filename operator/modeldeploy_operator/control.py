"""`modeldeploy` (also `kubectl modeldeploy`): watch ModelDeployments and steer their rollouts.

Steering never edits the spec, so GitOps tools do not revert it: requests are annotations
that the operator acts on once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ConfigError

from modeldeploy_operator.kube import KubernetesError, ModelDeploymentStore
from modeldeploy_operator.presentation import detail, history_table, summary_table


def _clear_screen() -> str:
    return "\x1b[2J\x1b[H"


async def _status(store: ModelDeploymentStore, args: argparse.Namespace, namespace: str | None) -> int:
    while True:
        now = datetime.now(UTC)
        if args.name:
            body = await store.get(args.name, namespace or store.default_namespace)
            if body is None:
                print(f"modeldeploy: ModelDeployment {args.name} not found", file=sys.stderr)
                return 1
            text = detail(body, now)
        else:
            text = summary_table(await store.list(namespace), now)
        if not args.watch:
            print(text)
            return 0
        print(_clear_screen() + f"{now:%H:%M:%S}  (Ctrl-C to stop)\n" + text, flush=True)
        await asyncio.sleep(args.interval)


async def _history(store: ModelDeploymentStore, args: argparse.Namespace, namespace: str) -> int:
    body = await store.get(args.name, namespace)
    if body is None:
        print(f"modeldeploy: ModelDeployment {args.name} not found", file=sys.stderr)
        return 1
    print(history_table(body))
    return 0


async def _run(args: argparse.Namespace) -> int:
    client = AsyncClient(config=KubeConfig.from_env())
    store = ModelDeploymentStore(client)
    namespace: str | None = (
        None if getattr(args, "all_namespaces", False) else (args.namespace or store.default_namespace)
    )
    try:
        if args.command == "status":
            return await _status(store, args, namespace)
        return await _history(store, args, namespace or store.default_namespace)
    finally:
        await client.close()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="modeldeploy", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="phase, weight and checks of one or all ModelDeployments")
    status.add_argument("name", nargs="?", help="one ModelDeployment in detail")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace")
    status.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    history = commands.add_parser("history", help="finished rollouts of a ModelDeployment")
    history.add_argument("name")
    for sub in (status, history):
        sub.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = asyncio.run(_run(args))
    except KeyboardInterrupt:
        code = 0
    except (KubernetesError, ConfigError) as error:
        print(f"modeldeploy: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)
