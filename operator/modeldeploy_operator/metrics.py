"""The operator's own Prometheus metrics: reconciles, API writes, rollouts and their checks.

Rollout series carry the ModelDeployment's namespace and name (one series per object and
outcome or check), so a dashboard can show a model's rollout beside its servers' traffic;
`forget` drops them when the object is deleted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modeldeploy_operator.rollout import StepAnalysis
from modeldeploy_operator.spec import ModelDeploymentStatus

PREFIX = "modeldeploy_operator_"
_OBJECT = ("namespace", "name")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconciles = Counter(
            PREFIX + "reconciles_total",
            "Reconciles of ModelDeployments, by result (ok or error).",
            ["result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            PREFIX + "reconcile_duration_seconds",
            "Time one reconcile took, Prometheus queries and API calls included.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.kubernetes_writes = Counter(
            PREFIX + "kubernetes_writes_total",
            "Write requests sent to the Kubernetes API, by verb and kind.",
            ["verb", "kind"],
            registry=registry,
        )
        self.kubernetes_reads = Counter(
            PREFIX + "kubernetes_reads_total",
            "Reads of Kubernetes objects by the reconcile, by verb, kind and source (cache: the watch"
            " cache answered; api: a request to the API server).",
            ["verb", "kind", "source"],
            registry=registry,
        )
        self.watch_cache_lists = Counter(
            PREFIX + "watch_cache_lists_total",
            "Full lists the watch cache made, by kind (one at start-up per kind, then one after each"
            " failed watch).",
            ["kind"],
            registry=registry,
        )
        self.events = Counter(
            PREFIX + "events_total",
            "Kubernetes Events about ModelDeployments, by type, reason and result (posted, repeated"
            " under its name, or failed).",
            ["type", "reason", "result"],
            registry=registry,
        )
        self.reconciles_waiting = Gauge(
            PREFIX + "reconciles_waiting",
            "ModelDeployments waiting for a reconcile worker (each counts once, however many triggers"
            " named it); 0 when the operator keeps up.",
            registry=registry,
        )
        self.reconcile_failures = Counter(
            PREFIX + "reconcile_failures_total",
            "Reconciles that failed and are retried with backoff, by reason (KubernetesAPIError or"
            " UnexpectedError).",
            ["reason"],
            registry=registry,
        )
        self.rollouts_started = Counter(
            PREFIX + "rollouts_started_total",
            "Canary rollouts started.",
            _OBJECT,
            registry=registry,
        )
        self.rollouts_finished = Counter(
            PREFIX + "rollouts_finished_total",
            "Canary rollouts ended, by outcome (promoted, rolledBack, aborted, superseded, cancelled).",
            [*_OBJECT, "outcome"],
            registry=registry,
        )
        self.canary_weight = Gauge(
            PREFIX + "rollout_canary_weight_percent",
            "The share of traffic the rollout gives the canary now (0 without a rollout).",
            _OBJECT,
            registry=registry,
        )
        self.rollout_step = Gauge(
            PREFIX + "rollout_step",
            "The step the rollout is on, counted from 1 (0 without a rollout).",
            _OBJECT,
            registry=registry,
        )
        self.checks = Counter(
            PREFIX + "analysis_checks_total",
            "Analysis checks judged, by check and verdict (pass, fail, inconclusive).",
            [*_OBJECT, "check", "verdict"],
            registry=registry,
        )
        self.prometheus_queries = Counter(
            PREFIX + "prometheus_queries_total",
            "Queries sent to Prometheus, by result (ok, or the kind of failure).",
            ["result"],
            registry=registry,
        )
        self.prometheus_query_seconds = Histogram(
            PREFIX + "prometheus_query_duration_seconds",
            "Time a Prometheus query took, failed ones included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.leader = Gauge(
            PREFIX + "leader",
            "1 while this replica holds the leader-election Lease (or runs without election), else 0.",
            registry=registry,
        )
        # The labelled children each ModelDeployment has, so `forget` can remove exactly those.
        self._series: dict[tuple[str, str], set[tuple[Counter | Gauge, tuple[str, ...]]]] = {}

    def observe_rollout(
        self,
        namespace: str,
        name: str,
        before: ModelDeploymentStatus,
        after: ModelDeploymentStatus,
        analysis: StepAnalysis | None,
    ) -> None:
        """Counts what one reconcile's decision changed: a rollout started or ended, checks judged."""
        started = after.canary is not None and (
            before.canary is None or before.canary.revision != after.canary.revision
        )
        if started:
            self.rollouts_started.labels(*self._track(self.rollouts_started, namespace, name)).inc()
        if after.history and (not before.history or after.history[0] != before.history[0]):
            finished = self._track(self.rollouts_finished, namespace, name, after.history[0].outcome)
            self.rollouts_finished.labels(*finished).inc()
        for check in analysis.checks if analysis is not None else ():
            judged = self._track(self.checks, namespace, name, check.name, check.verdict)
            self.checks.labels(*judged).inc()
        weight = after.canary.weight if after.canary else 0
        self.canary_weight.labels(*self._track(self.canary_weight, namespace, name)).set(weight)
        step = after.canary.step + 1 if after.canary else 0
        self.rollout_step.labels(*self._track(self.rollout_step, namespace, name)).set(step)

    def _track(self, metric: Counter | Gauge, namespace: str, name: str, *extra: str) -> tuple[str, ...]:
        labels = (namespace, name, *extra)
        self._series.setdefault((namespace, name), set()).add((metric, labels))
        return labels

    def forget(self, namespace: str, name: str) -> None:
        """Drops the series of a ModelDeployment that is gone."""
        for metric, labels in self._series.pop((namespace, name), set()):
            metric.remove(*labels)


def serve(address: str) -> None:
    """Serves the metrics at `host:port` in a background thread (every path answers them)."""
    parts = urlsplit(f"//{address}")
    start_http_server(parts.port or 8080, addr=parts.hostname or "0.0.0.0")  # noqa: S104 - pods listen on all interfaces


METRICS = OperatorMetrics()
