"""A model server for one MLflow model: `POST /predict`, `GET /healthz`, `GET /metrics`.

`POST /predict` takes one row (a JSON object) or `{"instances": [row, ...]}` and answers
`{"predictions": [score, ...], "task": task, "model": name, "version": n}`: the model's score
as `tasks/scoring.py` defines it (a classifier's positive-class probability, a regressor's
prediction), the same score the drift check uses. A multiclass classifier answers its
`"classes": [...]` (a class named by text is scored as its position in that list) and, with
class probabilities, `"probabilities": [[p, ...], ...]`, one list per row in the order of
the classes, so the router can read a label by name and score it by Brier. A row the
model's signature refuses gets 422 naming the column. Rows are scored in a worker thread
so the event loop keeps answering health checks. (Scoring a request of a few rows on the
event loop answered 103 requests a second instead of 79 here, but the canary test between two
such servers then took 167 and 214 s to decide instead of 57 s; our guess is that requests
waiting behind one another spread the latencies the sequential test compares.)

Fault injection for drills and tests (`--fault-error-rate`, `--fault-latency-ms`) makes a
share of requests fail with 503 or every request slower; both are off unless given.

Run: `python -m agentic_mlops.serving.model_server --model-uri models:/churn/2
--port 8081 [--tracking-uri URI] [--task auto|binary|multiclass|regression]`.

A standby (`--standby --port 8082`, no model) imports MLflow, scikit-learn and skops and
listens, answering `/healthz` 503 `standby`, until `POST /admin/load` gives it a model
(`{"model_uri", "tracking_uri", "task", "fault_error_rate", "fault_latency_ms"}`); it then
serves that model as if started with it. Those imports are most of a server's start (9 s of
11 on the 2-core machine, 7 s of them skops's trusted types), so the local backend keeps one
standby warm and a new version serves in about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any, Literal

import pandas as pd
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError

from agentic_mlops.decisions import TASKS, Task
from agentic_mlops.tasks.scoring import ScoringModel, load_scoring_model, model_task

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ModelServer:
    """Holds the loaded model and its Prometheus metrics."""

    def __init__(
        self,
        model: Any,
        name: str,
        version: str,
        fault_error_rate: float = 0.0,
        fault_latency_ms: float = 0.0,
        seed: int | None = None,
        task: Task | None = None,
    ) -> None:
        self.model = model if isinstance(model, ScoringModel) else ScoringModel.of(model)
        self.task: Task = task or model_task(self.model) or "binary"
        self.name, self.version = name, version
        self.fault_error_rate, self.fault_latency_ms = fault_error_rate, fault_latency_ms
        self.random = random.Random(seed)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "model_requests", "Predict requests.", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "model_latency_seconds",
            "Predict latency.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        return [float(score) for score in self.model.score(pd.DataFrame(rows), self.task)]

    def answer(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The scores of the rows, the task, and a multiclass model's class probabilities."""
        answer: dict[str, Any] = {"predictions": self.score(rows), "task": self.task}
        if self.task == "multiclass" and self.model.classes is not None:
            # the router reads a label by its class name: a class named by text is scored
            # as its position in this list
            answer["classes"] = [
                c.item() if hasattr(c, "item") else str(c) for c in self.model.classes
            ]
            probabilities = self.model.probabilities(self.model.conform(pd.DataFrame(rows)))
            if probabilities is not None:
                answer["probabilities"] = [
                    [round(float(p), 6) for p in row] for row in probabilities
                ]
        return answer

    async def predict(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._answer(400, {"error": "body is not JSON"}, start)
        rows = body.get("instances", [body]) if isinstance(body, dict) else None
        if not rows or not all(isinstance(row, dict) for row in rows):
            return self._answer(
                400, {"error": 'send one row object or {"instances": [...]}'}, start
            )
        if self.fault_latency_ms:
            await asyncio.sleep(self.fault_latency_ms / 1000)
        if self.fault_error_rate and self.random.random() < self.fault_error_rate:
            return self._answer(503, {"error": "injected fault"}, start)
        try:
            answer = await asyncio.to_thread(self.answer, rows)
        except Exception as error:  # schema enforcement and model errors name the problem
            return self._answer(422, {"error": f"cannot score: {error}"}, start)
        return self._answer(200, {**answer, "model": self.name, "version": self.version}, start)

    def _answer(self, code: int, payload: dict[str, Any], start: float) -> web.Response:
        self.requests.labels(code=str(code)).inc()
        self.latency.observe(time.perf_counter() - start)
        return web.json_response(payload, status=code)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.name, "version": self.version})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    def app(self) -> web.Application:
        application = web.Application()
        application.add_routes(
            [
                web.post("/predict", self.predict),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        return application


class LoadRequest(BaseModel):
    """What a standby is asked to serve: the arguments a server is otherwise started with."""

    model_uri: str
    tracking_uri: str | None = None
    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    fault_error_rate: float = Field(default=0.0, ge=0, le=1)
    fault_latency_ms: float = Field(default=0.0, ge=0)


def loaded_server(load: LoadRequest) -> ModelServer:
    """The model's server, its first (slow) calls already paid for with the model's input
    example, so that it is quick once `/healthz` says ready."""
    model = load_scoring_model(load.model_uri, load.tracking_uri)
    name, _, version = load.model_uri.removeprefix("models:/").partition("/")
    server = ModelServer(
        model,
        name,
        version,
        load.fault_error_rate,
        load.fault_latency_ms,
        task=None if load.task == "auto" else load.task,
    )
    example = model.pyfunc.input_example
    if example is not None:
        for _ in range(3):
            server.score(pd.DataFrame(example).to_dict("records"))
    return server


class Standby:
    """A server started without a model: warm, listening, and serving the first model that
    `POST /admin/load` names (one only; a second load is refused)."""

    def __init__(self) -> None:
        self.server: ModelServer | None = None
        self.loading = False

    async def load(self, request: web.Request) -> web.Response:
        try:
            load = LoadRequest.model_validate(await request.json())
        except (ValueError, ValidationError) as error:
            return web.json_response({"error": f"bad load request: {error}"}, status=400)
        if self.server is not None or self.loading:
            return web.json_response({"error": "this server has a model already"}, status=409)
        self.loading = True
        try:
            self.server = await asyncio.to_thread(loaded_server, load)
        except Exception as error:  # a model that cannot load: the caller stops this server
            why = f"cannot load {load.model_uri}: {error}"
            return web.json_response({"error": why}, status=422)
        finally:
            self.loading = False
        return web.json_response({"model": self.server.name, "version": self.server.version})

    def _delegate(self, handler: str):
        async def serve(request: web.Request) -> web.Response:
            if self.server is None:
                return web.json_response({"status": "standby", "model": None}, status=503)
            return await getattr(self.server, handler)(request)

        return serve

    def app(self) -> web.Application:
        application = web.Application()
        application.add_routes(
            [
                web.post("/admin/load", self.load),
                web.post("/predict", self._delegate("predict")),
                web.get("/healthz", self._delegate("healthz")),
                web.get("/metrics", self._delegate("metrics")),
            ]
        )
        return application


def warm_up() -> None:
    """Import what loading a model takes, so that a standby loads one in about a second."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401  (its trusted types import every scikit-learn estimator)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri")
    parser.add_argument("--standby", action="store_true", help="Start without a model.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--fault-error-rate", type=float, default=0.0)
    parser.add_argument("--fault-latency-ms", type=float, default=0.0)
    parser.add_argument("--task", choices=("auto", *TASKS), default="auto")
    args = parser.parse_args(argv)
    if args.standby == bool(args.model_uri):
        parser.error("give --model-uri, or --standby to wait for one")

    if args.standby:
        warm_up()
        app = Standby().app()
    else:
        load = LoadRequest(
            model_uri=args.model_uri,
            tracking_uri=args.tracking_uri,
            task=args.task,
            fault_error_rate=args.fault_error_rate,
            fault_latency_ms=args.fault_latency_ms,
        )
        app = loaded_server(load).app()
    web.run_app(
        app, host=args.host, port=args.port, print=None, handle_signals=True, access_log=None
    )


if __name__ == "__main__":
    main()
