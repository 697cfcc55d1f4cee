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

from modeldeploy_operator.kube import KubernetesError, KubeStorage
from modeldeploy_operator.presentation import detail, history_table, summary_table
from modeldeploy_operator.rollout import (
    ANNOTATION_ABORT,
    ANNOTATION_PAUSED,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
)

STEERING = {
    "promote": "move the canary to its next step (or, with --full, make it the stable model now)",
    "abort": "roll the canary back now",
    "retry": "roll out again the model a rollback rejected",
    "pause": "hold the rollout at its step",
    "resume": "go on with a paused rollout",
}


def _clear_screen() -> str:
    return "\x1b[2J\x1b[H"


async def _status(store: KubeStorage, args: argparse.Namespace, namespace: str | None) -> int:
    while True:
        now = datetime.now(UTC)
        if args.name:
            body = await store.get_model_deployment(args.name, namespace or store.default_namespace)
            if body is None:
                print(f"modeldeploy: ModelDeployment {args.name} not found", file=sys.stderr)
                return 1
            text = detail(body, now)
        else:
            text = summary_table(await store.list_model_deployments(namespace), now)
        if not args.watch:
            print(text)
            return 0
        print(_clear_screen() + f"{now:%H:%M:%S}  (Ctrl-C to stop)\n" + text, flush=True)
        await asyncio.sleep(args.interval)


async def _history(store: KubeStorage, args: argparse.Namespace, namespace: str) -> int:
    body = await store.get_model_deployment(args.name, namespace)
    if body is None:
        print(f"modeldeploy: ModelDeployment {args.name} not found", file=sys.stderr)
        return 1
    print(history_table(body))
    return 0


def request_annotations(command: str, full: bool, now: datetime) -> dict[str, str | None]:
    """The annotation change that asks the operator for `command`.

    One-shot requests carry the time, so asking again is a new request; pause is a state.
    """
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if command == "promote":
        return {ANNOTATION_PROMOTE: f"{'full' if full else 'step'}:{stamp}"}
    if command == "abort":
        return {ANNOTATION_ABORT: stamp}
    if command == "retry":
        return {ANNOTATION_RETRY: stamp}
    if command == "pause":
        return {ANNOTATION_PAUSED: "true"}
    return {ANNOTATION_PAUSED: None}


async def _steer(store: KubeStorage, args: argparse.Namespace, namespace: str) -> int:
    if await store.get_model_deployment(args.name, namespace) is None:
        print(f"modeldeploy: ModelDeployment {args.name} not found", file=sys.stderr)
        return 1
    await store.annotate(
        args.name, namespace, request_annotations(args.command, args.full, datetime.now(UTC))
    )
    print(f"modeldeploy: asked {namespace}/{args.name} to {args.command}{' fully' if args.full else ''}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    client = AsyncClient(config=KubeConfig.from_env())
    # The command only reads and annotates, never applies: the field manager is never used.
    store = KubeStorage(client, field_manager="modeldeploy-cli")
    namespace: str | None = (
        None if getattr(args, "all_namespaces", False) else (args.namespace or store.default_namespace)
    )
    try:
        if args.command == "status":
            return await _status(store, args, namespace)
        if args.command == "history":
            return await _history(store, args, namespace or store.default_namespace)
        return await _steer(store, args, namespace or store.default_namespace)
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
    subs = [status, history]
    for name, text in STEERING.items():
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name")
        sub.add_argument(
            "--full", action="store_true", help="promote: straight to 100%% (default: next step)"
        )
        subs.append(sub)
    for sub in subs:
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
