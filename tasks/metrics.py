"""Per-variant canary metrics, read from the router (or a Prometheus server scraping it).

The judge compares observations of the canary with those of the baseline. From the router
they are per request: latency in ms and error (0/1) for every request, and, once the label
arrives, the loss of the model's task (`LABEL_METRICS`): the Brier score of a binary
classifier, the absolute error of a regression model, the Brier score over the classes of a
multiclass classifier. The task is the champion's, from its stored model card
(`canary_task`). An analysis window starts with `mark()`; each
`collect()` adds what arrived since and returns everything in the window. From Prometheus
(`PrometheusMetrics`, chosen by `metrics_source` when `prometheus_url` is set) they are per
interval instead: one error ratio, mean latency and mean loss of the task per step of a range
query.
Every way of not getting data (router or Prometheus down, refused, malformed answer) raises
`MetricsError`: the caller fails closed, and repeated errors abort the rollout.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx
import numpy as np

from agentic_mlops.decisions import LABEL_METRICS
from agentic_mlops.tasks.canary_judge import MetricSpec

if TYPE_CHECKING:
    from agentic_mlops.decisions import Task
    from agentic_mlops.settings import Settings

VARIANTS = ("baseline", "canary")
TRACK_VARIANTS = {"stable": "baseline", "canary": "canary"}
"""The variant each Kubernetes track plays: its model servers' series carry a `track` label."""


class MetricsError(RuntimeError):
    """The metrics source could not be read."""


ABSOLUTE_ERROR_TOLERANCE_SHARE = 0.1
"""A regression canary may be worse by at most this share of the champion's holdout mean
absolute error: 10%, about what the binary Brier tolerance (0.02) is of a typical Brier score."""
MULTICLASS_BRIER_TOLERANCE = 0.04
"""The multiclass Brier score sums a squared error over every class (0 to 2): two classes give
twice the binary Brier score, so twice its tolerance."""


@dataclass(frozen=True)
class CanaryTask:
    """The task a canary is judged for, and the tolerance of its label metric."""

    task: Task = "binary"
    label_tolerance: float | None = None

    @property
    def label_metric(self) -> str:
        """The per-request loss judged once labels arrive (`LABEL_METRICS`)."""
        return LABEL_METRICS[self.task]


def canary_task(settings: Settings) -> CanaryTask:
    """The champion's task from its stored model card, and its label metric's tolerance.

    A champion without a card of its own (a team's retrained version, promoted by a canary)
    takes the newest card stored under home for the model: the task does not change between
    versions, and that card's MAE is the last one measured.

    A regression model's is `ABSOLUTE_ERROR_TOLERANCE_SHARE` of the card's holdout mean
    absolute error, in the target's units. A champion without a card (or none at all) is
    judged as a binary classifier, as before cards named a task.

    Raises:
        MetricsError: a regression champion whose card has no holdout MAE: nothing says how
            much worse is too much.
    """
    from agentic_mlops.tasks import registry
    from agentic_mlops.tasks.reference import newest_card, stored_card

    name = settings.model_name
    champion = registry.alias_version(name, registry.CHAMPION, settings)
    card = stored_card(name, champion, settings) if champion is not None else None
    if card is None:  # a champion promoted from a team's challenger: the model's newest card
        card = newest_card(name, settings)
    if card is None or card.task == "binary":
        return CanaryTask()
    if card.task == "multiclass":
        return CanaryTask("multiclass", MULTICLASS_BRIER_TOLERANCE)
    mae = card.metrics.get("mae")
    if not mae or mae <= 0:
        raise MetricsError(
            f"{name} v{champion} is a regression model whose card has no holdout MAE: adopt "
            "it again to judge a canary by absolute error"
        )
    return CanaryTask("regression", ABSOLUTE_ERROR_TOLERANCE_SHARE * mae)


def label_metric(task: CanaryTask, min_samples: int) -> MetricSpec:
    """The critical metric of labelled requests, for the task: Brier score (binary, tolerance
    0.02), absolute error (regression) or Brier score over the classes (multiclass)."""
    tolerance = 0.02 if task.task == "binary" else task.label_tolerance
    if tolerance is None:
        raise ValueError(f"a {task.task} canary needs the tolerance of its label metric")
    return MetricSpec(
        name=task.label_metric,
        kind="continuous",
        direction="increase_is_bad",
        critical=True,
        tolerance=tolerance,
        min_samples=max(min_samples // 2, 10),
        remove_outliers=False,
    )


LATENCY_REGRESSION_MS = 5.0
"""The slowdown a canary may show before a person decides (the soft latency limit); the
retraining search prefers challengers that score one row within half of it of the champion
(`retraining.LATENCY_MARGIN_MS`)."""


def canary_metrics(min_samples: int, task: CanaryTask | None = None) -> list[MetricSpec]:
    """What a canary is judged on.

    Errors and (once labels arrive) the task's label metric (`label_metric`: Brier score by
    default) are critical, and so is latency beyond a hard limit of 50 ms: any of them failing
    rolls the canary back. The same latency observations are also judged against a soft 5 ms
    limit as `latency_regression_ms`, not critical and of half weight: a modest slowdown alone
    makes the analysis marginal (score 86) and a person decides whether the canary's other
    qualities are worth it.
    """
    return [
        MetricSpec(
            name="error",
            kind="binary",
            direction="increase_is_bad",
            critical=True,
            tolerance=0.01,
            min_samples=min_samples,
            remove_outliers=False,
        ),
        MetricSpec(
            name="latency_ms",
            kind="continuous",
            direction="increase_is_bad",
            critical=True,
            tolerance=50.0,
            min_samples=min_samples,
        ),
        MetricSpec(
            name="latency_regression_ms",
            kind="continuous",
            direction="increase_is_bad",
            weight=0.5,
            tolerance=LATENCY_REGRESSION_MS,
            min_samples=min_samples,
        ),
        label_metric(task or CanaryTask(), min_samples),
    ]


def with_derived_metrics(
    values: dict[str, dict[str, np.ndarray]],
) -> dict[str, dict[str, np.ndarray]]:
    """Add the metrics judged on observations of another (`latency_regression_ms`)."""
    return {
        variant: {
            **metrics,
            **({"latency_regression_ms": metrics["latency_ms"]} if "latency_ms" in metrics else {}),
        }
        for variant, metrics in values.items()
    }


class RouterMetrics:
    """Observations per variant from the router's `/admin/samples`, since `mark()`; each
    label's loss under the metric name the router gave it (`brier`, `absolute_error`, ...)."""

    def __init__(self, router_url: str, timeout: float = 5.0, task: CanaryTask | None = None):
        self.router_url = router_url.rstrip("/")
        self.timeout = timeout
        self.task = task or CanaryTask()
        self.after_request = 0
        self.after_feedback = 0
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def _read(self) -> dict:
        try:
            response = httpx.get(
                f"{self.router_url}/admin/samples",
                params={"after_request": self.after_request, "after_feedback": self.after_feedback},
                timeout=self.timeout,
            )
            response.raise_for_status()
            payload = response.json()
            payload["requests"], payload["feedback"]  # noqa: B018 - shape check
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise MetricsError(f"router metrics unavailable: {error}") from error
        return payload

    def mark(self) -> None:
        """Start a new analysis window: forget what was collected, skip what came before."""
        payload = self._read()
        self.after_request = payload["last_request"]
        self.after_feedback = payload["last_feedback"]
        self.values.clear()

    def collect(self) -> dict[str, dict[str, np.ndarray]]:
        """Everything observed in the window so far, per variant and metric."""
        payload = self._read()
        for _, variant, latency_ms, error, _score in payload["requests"]:
            self.values[variant]["latency_ms"].append(latency_ms)
            self.values[variant]["error"].append(error)
        for _, variant, _correct, loss, *metric in payload["feedback"]:
            if loss is not None:
                self.values[variant][metric[0] if metric else "brier"].append(loss)
        self.after_request = max(self.after_request, payload["last_request"])
        self.after_feedback = max(self.after_feedback, payload["last_feedback"])
        return {
            variant: {
                name: np.asarray(values, dtype=float)
                for name, values in self.values[variant].items()
            }
            for variant in VARIANTS
        }


def interval_canary_metrics(min_samples: int, task: CanaryTask | None = None) -> list[MetricSpec]:
    """`canary_metrics` for per-interval values: an interval's error ratio lies anywhere in
    [0, 1], so errors are compared as a continuous metric; `min_samples` counts intervals."""
    return [
        spec.model_copy(update={"kind": "continuous"}) if spec.kind == "binary" else spec
        for spec in canary_metrics(min_samples, task)
    ]


LOSS_SERIES = {
    "brier": "router_brier_sum_total",
    "multiclass_brier": "router_brier_sum_total",
    "absolute_error": "router_absolute_error_sum_total",
}
"""The router's counter of each label metric's sum (`serving/router.py`)."""


class PrometheusMetrics:
    """Per-interval values per variant from a Prometheus server scraping the router, since
    `mark()`.

    Each value is one interval of one variant: its error ratio, its mean latency in ms, and its
    mean loss of labelled requests, named by the model's task (`task`, binary by default): the
    Brier score (`brier`, or `multiclass_brier` summed over the classes) from
    `router_brier_sum`, or the absolute error of a regression model from
    `router_absolute_error_sum`, each divided by the labels received. So `min_samples` counts
    intervals, not requests (20 intervals of 2 s are 40 s of traffic), and the values are
    judged with `interval_canary_metrics`: `canary_metrics` declares errors binary, which
    ratios are not, so it would judge them nodata.

    `collect()` asks `/api/v1/query_range` for the steps from the mark plus one window to now,
    every `step_seconds` (2 s). Each step's value covers a window of `step_seconds` plus
    `scrape_interval_seconds` (3 s) ending at the step: consecutive windows share one scrape,
    so what happened between two scrapes counts in exactly one value, and the first window
    starts at the mark. Prometheus must scrape the router every `scrape_interval_seconds`.
    A range query answers at most 11,000 steps, about six hours at 2 s.

    An interval in which a variant had no calls (or no labels, for the loss) is 0 / 0 and is
    dropped, never counted as 0: with too few intervals the judge says nodata. Errors are
    divided by every model call (`router_latency_seconds_count`), not by the answers in
    `router_requests_total`: a failed canary call answered by the baseline is counted there
    under the baseline, which would make a canary failing half its calls look as failing all
    of them. A variant that has had calls but no error series yet has an error ratio of 0.

    With `series="model_server"` (the Kubernetes backend, where no router of ours sees the
    traffic) the series are the model servers' own, `model_requests_total{code}` and
    `model_latency_seconds`, summed per `track` label (stable is the baseline): errors are their
    5xx answers, and there is no Brier score, since labels reach no model server.
    """

    def __init__(
        self,
        prometheus_url: str,
        step_seconds: float = 2.0,
        scrape_interval_seconds: float = 1.0,
        matchers: str = "",
        timeout: float = 5.0,
        series: Literal["router", "model_server"] = "router",
        task: CanaryTask | None = None,
    ):
        """`matchers` are label matchers added to every selector, such as `job="router"`, for
        a Prometheus that scrapes more than one router; `series` whose metrics are read;
        `task` the model's, which names the loss of its labelled requests."""
        if step_seconds <= 0 or scrape_interval_seconds <= 0:
            raise ValueError("the step and the scrape interval must be positive")
        self.prometheus_url = prometheus_url.rstrip("/")
        self.step_seconds = step_seconds
        self.window_seconds = step_seconds + scrape_interval_seconds
        self.matchers = matchers
        self.timeout = timeout
        self.series = series
        self.task = task or CanaryTask()
        self.variant_label = "variant" if series == "router" else "track"
        self.start: float | None = None
        self.clock_offset = 0.0

    def queries(self) -> dict[str, str]:
        """The PromQL of each metric: one series per variant, one value per window."""
        window = f"{round(self.window_seconds * 1000)}ms"

        def rate(name: str, matcher: str = "") -> str:
            matchers = ",".join(m for m in (matcher, self.matchers) if m)
            selector = f"{name}{{{matchers}}}" if matchers else name
            return f"sum by ({self.variant_label}) (rate({selector}[{window}]))"

        if self.series == "model_server":
            calls = rate("model_latency_seconds_count")
            errors = rate("model_requests_total", 'code=~"5.."')
            return {
                "error": f"({errors} or {calls} * 0) / {calls}",
                "latency_ms": f"1000 * {rate('model_latency_seconds_sum')} / {calls}",
            }
        calls = rate("router_latency_seconds_count")
        loss = LOSS_SERIES[self.task.label_metric]
        return {
            "error": f"({rate('router_errors_total')} or {calls} * 0) / {calls}",
            "latency_ms": f"1000 * {rate('router_latency_seconds_sum')} / {calls}",
            self.task.label_metric: f"{rate(loss)} / {rate('router_feedback_total')}",
        }

    def _api(self, path: str, params: dict[str, str]) -> dict:
        try:
            response = httpx.get(
                f"{self.prometheus_url}{path}", params=params, timeout=self.timeout
            )
        except httpx.HTTPError as error:
            raise MetricsError(f"prometheus unavailable: {error}") from error
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if (
            response.status_code != 200
            or not isinstance(payload, dict)
            or payload.get("status") != "success"
            or not isinstance(payload.get("data"), dict)
        ):
            detail = (
                f"{payload.get('errorType')}: {payload.get('error')}"
                if isinstance(payload, dict) and payload.get("status") == "error"
                else response.text[:200]
            )
            raise MetricsError(f"prometheus {path} answered HTTP {response.status_code}: {detail}")
        return payload["data"]

    def mark(self) -> None:
        """Start a new analysis window now, by Prometheus' clock."""
        data = self._api("/api/v1/query", {"query": "time()"})
        try:
            if data["resultType"] != "scalar":
                raise ValueError(f"a {data['resultType']} answer to time()")
            now = float(data["result"][1])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise MetricsError(f"malformed prometheus answer: {error}") from error
        self.clock_offset = now - time.time()
        self.start = now

    def collect(self) -> dict[str, dict[str, np.ndarray]]:
        """Every complete interval of the window so far, per variant and metric."""
        if self.start is None:
            raise MetricsError("no analysis window: call mark() first")
        queries = self.queries()
        values = {variant: {name: np.empty(0) for name in queries} for variant in VARIANTS}
        first = self.start + self.window_seconds
        end = time.time() + self.clock_offset
        if end < first:
            return values
        for name, query in queries.items():
            data = self._api(
                "/api/v1/query_range",
                {
                    "query": query,
                    "start": f"{first:.3f}",
                    "end": f"{end:.3f}",
                    "step": f"{self.step_seconds:g}",
                },
            )
            try:
                if data["resultType"] != "matrix":
                    raise ValueError(f"a {data['resultType']} answer, not a matrix")
                for series in data["result"]:
                    variant = series["metric"].get(self.variant_label)
                    if self.series == "model_server":
                        variant = TRACK_VARIANTS.get(variant)
                    if variant in values:
                        points = np.asarray([float(v) for _, v in series["values"]])
                        values[variant][name] = points[np.isfinite(points)]
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise MetricsError(f"malformed prometheus answer for {name}: {error}") from error
        return values


def metrics_source(settings: Settings, router_url: str) -> RouterMetrics | PrometheusMetrics:
    """Where a canary's metrics come from: `settings.prometheus_url` if set, else the router.

    On the kubernetes backend no router of ours sees the traffic: the model servers' own series
    are read from Prometheus, which must be set (`MetricsError` otherwise).
    """
    if settings.serving.backend == "kubernetes":
        if not settings.prometheus_url:
            raise MetricsError(
                "the kubernetes backend judges a canary on Prometheus' metrics of its model "
                "servers: set AGENTIC_MLOPS_PROMETHEUS_URL"
            )
        return PrometheusMetrics(settings.prometheus_url, series="model_server")
    task = canary_task(settings)
    if settings.prometheus_url:
        return PrometheusMetrics(settings.prometheus_url, task=task)
    return RouterMetrics(router_url, task=task)


def judged_metrics(
    source: RouterMetrics | PrometheusMetrics, min_requests: int, step_seconds: float
) -> list[MetricSpec]:
    """The metric specs that fit a source: per request from the router; per interval from
    Prometheus, where a step of `step_seconds` holds at most step / interval values, and only
    the metrics its series have (no loss of labelled requests from model servers)."""
    if isinstance(source, PrometheusMetrics):
        intervals = int(step_seconds // source.step_seconds)
        specs = interval_canary_metrics(max(min(min_requests, intervals // 2), 5), source.task)
        read = with_derived_metrics({"any": dict.fromkeys(source.queries())})["any"]
        return [spec for spec in specs if spec.name in read]
    return canary_metrics(min_requests, source.task)
