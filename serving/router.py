"""The canary router: one address in front of the baseline and canary model servers.

- `POST /predict` goes to the canary with probability `weight`, else to the baseline. The
  answer carries `request_id` and `variant`. A canary that fails (5xx, refused connection, no
  answer within 2 s) is counted against the canary and the request is answered by the baseline
  instead, so users never see a canary's failure and a rollback drops nothing.
- `POST /feedback` `{"request_id", "label"}`: the delayed ground truth of a served request,
  turned into the loss of the model server's task (`label_loss`, named by the answer's
  `task`): a binary classifier's Brier score (and correct at 0.5), a regression model's
  absolute error, a multiclass classifier's Brier score over its class probabilities (and
  correct when the label is the predicted class).
- `GET /metrics`: Prometheus metrics per variant (requests, errors, latency histogram, score
  histogram, feedback, correct, Brier sum, absolute-error sum) and the canary weight.
- `GET /healthz`: ready, 200 once a baseline serves; 503 with a one-line reason until then.
  `GET /livez`: the process answers (200), model or not.
- `GET /admin/state`, `POST /admin/state`: which servers are baseline and canary, and the
  weight. A change takes effect at once for new requests; requests in flight finish where
  they started. The state is written atomically to a file and read back at start.
- `GET /admin/samples?after_request=N&after_feedback=M`: the raw observations since N and M
  (bounded ring buffers), which the canary judge compares.
- Every answered row and every accepted label is appended to the request log
  (`request_log.py`: JSON lines under `home/serving/<model>/log/`, rotated and bounded), which
  the monitor reads; `POST /admin/flush-log` writes what is buffered at once.

Run: `python -m agentic_mlops.serving.router --port 8080 --state PATH
[--request-log DIR]`; the log's folder and bounds come from the `serving_log_*` settings.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError, model_validator

from agentic_mlops.decisions import LABEL_METRICS
from agentic_mlops.serving.request_log import RequestLog
from agentic_mlops.settings import load_settings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BASELINE, CANARY = "baseline", "canary"
MODEL_TIMEOUT_SECONDS = {BASELINE: 30.0, CANARY: 2.0}
"""Longest wait for a model server's answer, per variant. The canary's is short: a canary that
hangs costs each of its requests 2 s before the baseline answers instead, not 30 s."""


@dataclass(frozen=True)
class Served:
    """What the router keeps of an answered request until its label arrives."""

    variant: str
    score: float
    task: str = "binary"
    classes: tuple[str, ...] = ()
    probabilities: tuple[float, ...] = ()


def served_from(variant: str, answer: dict[str, Any]) -> Served | None:
    """The first row's score, task and (multiclass) class probabilities of a model server's
    answer; None when it has no score."""
    scores = answer.get("predictions") or [None]
    if scores[0] is None:
        return None
    probabilities = (answer.get("probabilities") or [[]])[0]
    return Served(
        variant,
        float(scores[0]),
        str(answer.get("task", "binary")),
        tuple(str(c) for c in answer.get("classes") or ()),
        tuple(float(p) for p in probabilities),
    )


def predicted_class(score: float, classes: tuple[str, ...]) -> str:
    """The class a multiclass score names: the number itself, or, when the model names its
    classes by text, the name at that position of its class list."""
    if classes and not all(_is_number(name) for name in classes):
        position = int(score)
        if score.is_integer() and 0 <= position < len(classes):
            return classes[position]
    return str(int(score)) if score.is_integer() else str(score)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_loss(served: Served, label: Any) -> tuple[int | None, float | None, str]:
    """The loss of one labelled request, by its model's task.

    - binary: the label is 0 or 1; the Brier score (score - label)^2, and whether the score
      is on the label's side of 0.5;
    - regression: the label is a number; the absolute error |prediction - label|;
    - multiclass: the label is one of the model's classes, by number or name; the Brier
      score summed over the classes, sum_k (p_k - [label = k])^2 (0 to 2), and whether the
      predicted class is the label. A model that gave no probabilities has no loss (None),
      only correctness.

    Returns:
        Correct (1, 0, or None for regression), the loss, and the loss's metric name.

    Raises:
        ValueError: the label does not fit the task, in one line for the caller.
    """
    metric = LABEL_METRICS.get(served.task, "brier")
    if served.task == "regression":
        if (
            isinstance(label, bool)
            or not isinstance(label, int | float)
            or not math.isfinite(label)
        ):
            raise ValueError("label must be a finite number for a regression model")
        return None, abs(served.score - float(label)), metric
    if served.task == "multiclass":
        classes = served.classes
        name = str(int(label)) if isinstance(label, float) and label.is_integer() else str(label)
        if classes and name not in classes:
            raise ValueError(f"label must be one of the model's classes {list(classes)}")
        correct = int(predicted_class(served.score, classes) == name)
        if not served.probabilities or len(served.probabilities) != len(classes):
            return correct, None, metric
        brier = sum(
            (p - (c == name)) ** 2 for c, p in zip(classes, served.probabilities, strict=True)
        )
        return correct, brier, metric
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise ValueError("label must be 0 or 1") from None
    if label not in (0, 1):
        raise ValueError("label must be 0 or 1")
    return int((served.score >= 0.5) == bool(label)), (served.score - label) ** 2, metric


class Backend(BaseModel):
    """A model server the router can send to."""

    url: str = Field(description="Base address, e.g. http://127.0.0.1:8081")
    version: int | None = Field(default=None, description="Registered model version it serves.")


class RouterState(BaseModel):
    """Where traffic goes."""

    baseline: Backend | None = None
    canary: Backend | None = None
    weight: float = Field(default=0.0, ge=0.0, le=1.0, description="Share sent to the canary.")
    generation: int = 0

    @model_validator(mode="after")
    def _canary_needs_a_server(self) -> RouterState:
        if self.weight > 0 and self.canary is None:
            raise ValueError("a canary weight above 0 needs a canary server")
        return self


class Router:
    """The router's state, metrics and sample buffers."""

    def __init__(
        self,
        state_path: Path,
        buffer: int = 200_000,
        seed: int | None = None,
        request_log: RequestLog | None = None,
    ):
        self.state_path = state_path
        self.request_log = request_log
        self.state = RouterState()
        if state_path.exists():
            self.state = RouterState.model_validate_json(state_path.read_text())
        self.random = random.Random(seed)
        self.pending: OrderedDict[str, Served] = OrderedDict()
        self.buffer = buffer
        self.request_seq, self.feedback_seq = itertools.count(1), itertools.count(1)
        self.requests: deque[tuple] = deque(maxlen=buffer)
        self.feedback: deque[tuple] = deque(maxlen=buffer)
        self.session: aiohttp.ClientSession | None = None
        self.registry = CollectorRegistry()
        labels = ["variant"]
        self.m_requests = Counter(
            "router_requests",
            "Requests by variant and status.",
            ["variant", "code"],
            registry=self.registry,
        )
        self.m_errors = Counter(
            "router_errors", "Failed model calls.", labels, registry=self.registry
        )
        self.m_failover = Counter(
            "router_failover", "Canary failures answered by the baseline.", registry=self.registry
        )
        self.m_latency = Histogram(
            "router_latency_seconds",
            "Model call latency.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.m_score = Histogram(
            "router_score",
            "Predicted churn scores.",
            labels,
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.m_feedback = Counter(
            "router_feedback", "Labels received.", labels, registry=self.registry
        )
        self.m_correct = Counter(
            "router_correct",
            "Labelled predictions that were right.",
            labels,
            registry=self.registry,
        )
        self.m_brier = Counter(
            "router_brier_sum",
            "Sum of Brier scores of labelled requests.",
            labels,
            registry=self.registry,
        )
        self.m_absolute_error = Counter(
            "router_absolute_error_sum",
            "Sum of absolute errors of labelled requests to a regression model.",
            labels,
            registry=self.registry,
        )
        self.m_weight = Gauge(
            "router_canary_weight", "Share of traffic to the canary.", registry=self.registry
        )
        self.m_weight.set(self.state.weight)
        for variant in (BASELINE, CANARY):  # every series exists from the start, at 0
            for counter in (
                self.m_errors,
                self.m_feedback,
                self.m_correct,
                self.m_brier,
                self.m_absolute_error,
            ):
                counter.labels(variant)
            self.m_latency.labels(variant)

    async def start(self, app: web.Application) -> None:
        gc.collect()
        gc.freeze()  # full collections then skip startup objects: fewer long pauses at p99
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=MODEL_TIMEOUT_SECONDS[BASELINE]),
        )
        if self.request_log is not None:
            await self.request_log.start()

    async def stop(self, app: web.Application) -> None:
        if self.session:
            await self.session.close()
        if self.request_log is not None:
            await self.request_log.stop()

    def choose(self, state: RouterState) -> str:
        if state.canary is not None and self.random.random() < state.weight:
            return CANARY
        return BASELINE

    async def call(self, backend: Backend, body: bytes, variant: str) -> tuple[int, bytes]:
        async with self.session.post(
            f"{backend.url}/predict",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=MODEL_TIMEOUT_SECONDS[variant]),
        ) as response:
            return response.status, await response.read()

    async def observe(self, variant: str, backend: Backend, body: bytes):
        start = time.perf_counter()
        try:
            status, payload = await self.call(backend, body, variant)
        except (TimeoutError, aiohttp.ClientError, OSError):
            status, payload = 599, b'{"error": "model server unreachable"}'
        elapsed = time.perf_counter() - start
        failed = status >= 500
        self.m_latency.labels(variant).observe(elapsed)
        if failed:
            self.m_errors.labels(variant).inc()
        return status, payload, elapsed, failed

    async def predict(self, request: web.Request) -> web.Response:
        state = self.state
        if state.baseline is None:
            return web.json_response({"error": "no model is being served"}, status=503)
        body = await request.read()
        variant = self.choose(state)
        backend = state.canary if variant == CANARY else state.baseline
        status, payload, elapsed, failed = await self.observe(variant, backend, body)
        if failed and variant == CANARY:
            self._record(CANARY, elapsed, True, None)
            self.m_failover.inc()
            variant = BASELINE
            status, payload, elapsed, failed = await self.observe(variant, state.baseline, body)
        self.m_requests.labels(variant, str(status)).inc()
        if status != 200:
            if failed:
                self._record(variant, elapsed, True, None)
            return web.Response(
                body=payload, status=502 if failed else status, content_type="application/json"
            )
        answer = json.loads(payload)
        scores = answer.get("predictions") or [None]
        self._record(variant, elapsed, False, scores[0])
        request_id = uuid.uuid4().hex
        served = served_from(variant, answer)
        if served is not None:
            for score in scores:
                self.m_score.labels(variant).observe(score)
            self.pending[request_id] = served
            if len(self.pending) > self.buffer:
                self.pending.popitem(last=False)
            if self.request_log is not None:
                served_by = state.canary if variant == CANARY else state.baseline
                self.request_log.served(request_id, variant, served_by.version, scores, body)
        answer.update(request_id=request_id, variant=variant)
        return web.json_response(answer, headers={"X-Request-Id": request_id})

    def _record(self, variant: str, elapsed: float, failed: bool, score: float | None) -> None:
        """One observation: (sequence, variant, latency ms, error 0/1, first score)."""
        self.requests.append(
            (next(self.request_seq), variant, round(elapsed * 1000, 3), int(failed), score)
        )

    async def receive_feedback(self, request: web.Request) -> web.Response:
        """A label for a served request: its loss is recorded once, under the request's
        variant; a label that does not fit the model's task is refused and the request stays
        pending."""
        try:
            body = await request.json()
            request_id, label = str(body["request_id"]), body["label"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response(
                {"error": 'send {"request_id": str, "label": ...}'}, status=400
            )
        served = self.pending.get(request_id)
        if served is None:
            return web.json_response({"error": f"unknown request id {request_id}"}, status=404)
        try:
            correct, loss, metric = label_loss(served, label)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        del self.pending[request_id]
        variant = served.variant
        self.m_feedback.labels(variant).inc()
        if correct is not None:
            self.m_correct.labels(variant).inc(correct)
        if loss is not None:
            counter = self.m_absolute_error if metric == "absolute_error" else self.m_brier
            counter.labels(variant).inc(loss)
        self.feedback.append(
            (
                next(self.feedback_seq),
                variant,
                correct,
                None if loss is None else round(loss, 6),
                metric,
            )
        )
        if self.request_log is not None:
            self.request_log.labelled(request_id, label)
        answer: dict[str, Any] = {"variant": variant, metric: loss}
        if correct is not None:
            answer["correct"] = bool(correct)
        return web.json_response(answer)

    async def get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.model_dump())

    async def set_state(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            merged = {**self.state.model_dump(), **changes, "generation": self.state.generation + 1}
            state = RouterState.model_validate(merged)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'state'}: {e['msg']}" for e in error.errors()
            )
            return web.json_response({"error": problems}, status=400)
        except (json.JSONDecodeError, TypeError) as error:
            return web.json_response({"error": f"send a JSON object ({error})"}, status=400)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(state.model_dump_json())
        tmp.replace(self.state_path)
        self.state = state
        self.m_weight.set(state.weight)
        return web.json_response(state.model_dump())

    async def samples(self, request: web.Request) -> web.Response:
        try:
            after_request = int(request.query.get("after_request", 0))
            after_feedback = int(request.query.get("after_feedback", 0))
        except ValueError:
            return web.json_response({"error": "after_* must be integers"}, status=400)
        requests = [r for r in self.requests if r[0] > after_request]
        feedback = [f for f in self.feedback if f[0] > after_feedback]
        return web.json_response(
            {
                "requests": requests,
                "feedback": feedback,
                "last_request": self.requests[-1][0] if self.requests else after_request,
                "last_feedback": self.feedback[-1][0] if self.feedback else after_feedback,
                "state": self.state.model_dump(),
            }
        )

    async def flush_log(self, request: web.Request) -> web.Response:
        """Write the request log's buffers now; the lines written and the log's counts."""
        if self.request_log is None:
            return web.json_response({"error": "the request log is off"}, status=404)
        written = self.request_log.flush()
        return web.json_response({"written": written, **self.request_log.stats()})

    async def healthz(self, request: web.Request) -> web.Response:
        """Ready: 200 once a baseline serves; until then 503 with the reason, so a client that
        waits for readiness sends no request the router would answer with 503."""
        state = self.state.model_dump()
        if self.state.baseline is None:
            reason = "no model is being served yet: no baseline is set (POST /admin/state)"
            return web.json_response({"status": "not ready", "reason": reason, **state}, status=503)
        return web.json_response({"status": "ok", **state})

    async def livez(self, request: web.Request) -> web.Response:
        """Alive: 200 whenever the process answers, with or without a model to serve."""
        return web.json_response({"status": "alive"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    def app(self) -> web.Application:
        application = web.Application()
        application.on_startup.append(self.start)
        application.on_cleanup.append(self.stop)
        application.add_routes(
            [
                web.post("/predict", self.predict),
                web.post("/feedback", self.receive_feedback),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/livez", self.livez),
                web.get("/admin/state", self.get_state),
                web.post("/admin/state", self.set_state),
                web.get("/admin/samples", self.samples),
                web.post("/admin/flush-log", self.flush_log),
            ]
        )
        return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--request-log", type=Path, help="Folder of the request log.")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.request_log is not None:
        settings = settings.model_copy(update={"serving_log_dir": args.request_log})
    router = Router(args.state, request_log=RequestLog.from_settings(settings))
    web.run_app(router.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
