"""The Prometheus side of a rollout: the due analysis window's queries, asked and evaluated.

Only addresses the operator allows are queried; an unanswered query is an inconclusive check.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from modeldeploy_operator.analysis import QueryFailure, QueryResult, evaluate, plan_analysis
from modeldeploy_operator.builders import Owner
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.prometheus import PrometheusClient, PrometheusError
from modeldeploy_operator.rollout import StepAnalysis, analysis_window
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelDeploymentStatus


class WindowAnalyst:
    """Queries Prometheus for the analysis window a rollout's status says is due."""

    def __init__(
        self, prometheus: PrometheusClient, settings: OperatorSettings, metrics: OperatorMetrics
    ) -> None:
        self._prometheus = prometheus
        self._settings = settings
        self._metrics = metrics

    async def analyse(
        self, owner: Owner, spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
    ) -> StepAnalysis | None:
        """The checks of the analysis window that is due, or None when none is."""
        window = analysis_window(spec, status, now)
        if window is None:
            return None
        plan = plan_analysis(owner.name, owner.namespace, spec.rollout.analysis, window.end - window.start)
        address = spec.rollout.analysis.prometheus_address or self._settings.prometheus_address
        allowed = self._settings.allows_prometheus(address)

        async def answer(query: str) -> QueryResult:
            if not allowed:
                self._metrics.prometheus_queries.labels("not-allowed").inc()
                return QueryFailure(
                    "not-allowed",
                    f"{address} is neither the operator's Prometheus nor in its"
                    " MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES",
                )
            started = time.perf_counter()
            result = "ok"
            try:
                return await self._prometheus.query(address, query, at=window.end)
            except PrometheusError as error:
                result = error.kind
                return QueryFailure(error.kind, str(error))
            finally:
                self._metrics.prometheus_queries.labels(result).inc()
                self._metrics.prometheus_query_seconds.observe(time.perf_counter() - started)

        keys = list(plan.queries)
        answers = await asyncio.gather(*(answer(plan.queries[key]) for key in keys))
        return StepAnalysis(
            window=window, checks=tuple(evaluate(plan, dict(zip(keys, answers, strict=True))))
        )
