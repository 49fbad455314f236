"""The `agentic-mlops` command line: each subcommand runs one phase as a Prefect flow.

Bad input ends with a one-line error and exit code 2; a failed run with exit code 1.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentic_mlops.settings import load_settings

app = typer.Typer(
    name="agentic-mlops",
    help="Run the ML lifecycle as Prefect flows, with agents at its decision points.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def checked_arguments(flow, **arguments):
    """The flow's arguments as Prefect will validate them, or a one-line error (exit 2)."""
    from prefect.exceptions import ParameterTypeError
    from prefect.logging.loggers import disable_logger

    try:
        with disable_logger("prefect.flows"):
            flow.validate_parameters(arguments)
    except ParameterTypeError as error:
        problems = str(error).splitlines()[1:] or [str(error)]
        fail("invalid parameters: " + "; ".join(p.strip(" -") for p in problems))
    return arguments


@app.callback()
def check_settings() -> None:
    """Settings that cannot work end every command before it starts: a value that does not
    validate, or an agent model this installation cannot build (one line, exit 2)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from agentic_mlops.settings import settings_problem

    try:
        settings = load_settings()
    except (ValidationError, SettingsError) as error:
        fail(settings_problem(error))
    if settings.agents.model != "policy":
        from agentic_mlops.agents.decision_runtime import model_problem

        if problem := model_problem(settings):
            fail(problem)


def run_flow(
    flow, arguments: dict, doing: str | None, what: str, invalid: tuple[str, ...] = ("InvalidData",)
):
    """Run `flow` here as the command's flow run, on the server `announce_server` names,
    showing `doing` meanwhile. A failed run ends the command with its message: exit 2 when
    its state is one of `invalid` (bad input), else 1. Returns the final state."""
    announce_server()
    with errors.status(doing) if doing else contextlib.nullcontext():
        state = flow(**arguments, return_state=True)
    if state.is_failed():
        fail(state.message or f"{what} failed", 2 if state.name in invalid else 1)
    return state


NO_STACK = (
    "No local stack: starting a temporary Prefect server for this command "
    "(`agentic-mlops up` keeps one running)"
)


def announce_server(temporary: bool = False) -> None:
    """Say on one line (stderr) which Prefect server the command's flows run on; `temporary`:
    the command has started its own already."""
    import os

    from agentic_mlops import stack

    if temporary:
        line = NO_STACK
    elif url := stack.in_use(load_settings().home):
        line = f"Using the local stack: Prefect at {url} (`agentic-mlops down` stops it)"
    elif os.environ.get("PREFECT_API_URL"):
        line = f"Using the Prefect server at {os.environ['PREFECT_API_URL']}"
    else:
        line = NO_STACK
    errors.print(line, highlight=False, soft_wrap=True)


def start_server_early():
    """Announce the server the flow will run on; with none to use, start the temporary one now
    so it starts while this process imports and reads its data (`runtime.start_temporary_server`).
    Called before Prefect is imported."""
    from agentic_mlops.runtime import start_temporary_server

    server = start_temporary_server(load_settings())
    announce_server(temporary=server is not None)
    return server


def start_stack_early(settings):
    """Start the local stack (`stack.start`) when no Prefect server is set and none runs, and
    point Prefect at it, so the command imports its libraries while the servers start (then
    `finish_stack`). Called before Prefect is imported; None when nothing was started."""
    import os
    import sys

    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None  # the stack already runs (`runtime` pointed Prefect at it), or another
    starting = start_stack(settings)
    os.environ["PREFECT_API_URL"] = starting.record.prefect.api_url
    return starting


def start_stack(settings):
    """`stack.start`; a one-line error (exit 1) when a process cannot be started."""
    from agentic_mlops import stack

    try:
        return stack.start(settings)
    except stack.StackError as error:
        fail(str(error).splitlines()[0] + f" (logs in {stack.stack_dir(settings.home)})", 1)


def wait_for_server(server) -> None:
    """Wait for the temporary server started early, if one was; a one-line error if it fails."""
    from agentic_mlops import stack

    if server is None:
        return
    try:
        with errors.status("Waiting for the temporary Prefect server..."):
            stack.wait_ready(server, timeout=90)
    except stack.StackError as error:
        fail(str(error).splitlines()[0] + f" (log: {server.log})", 1)


def profile_reference_early(reference: Path, target: str | None, model: str | None) -> None:
    """Build (or find) the reference file's cached profile while the temporary server starts;
    the flow then finds it ready. What goes wrong here is left to the flow, which reports it
    on its own terms (a `NoReference` or `InvalidData` state)."""
    from agentic_mlops.tasks.reference import resolve_reference

    settings = load_settings()
    with contextlib.suppress(Exception):
        resolve_reference.fn(str(reference), target, settings, model)


def where_to_look() -> str:
    from agentic_mlops import stack

    settings = load_settings()
    lines = [f"Home: {settings.home}"]
    tracking = settings.tracking_uri()
    if mlflow_url := stack.mlflow_ui_url(settings.home):
        lines.append(f"MLflow UI: {mlflow_url}")
    elif tracking.startswith(("sqlite", "postgresql", "mysql")):
        lines.append(f"MLflow UI: mlflow ui --backend-store-uri {tracking}")
    else:
        lines.append(f"MLflow UI: {tracking}")
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if PREFECT_API_URL.value():
        lines.append(f"Prefect UI: {PREFECT_UI_URL.value() or PREFECT_API_URL.value()}")
    else:
        lines.append(
            "Prefect UI: `agentic-mlops up` starts it (and the MLflow UI) in the background"
        )
    return "\n".join(lines)


def print_training(result) -> None:
    table = Table(title=f"{result.model_name} v{result.version}  ({', '.join(result.aliases)})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"MLflow run {result.run_id}; data {result.data_source}", highlight=False)


@app.command()
def train(
    data: Annotated[
        Path | None, typer.Option(help="CSV or Parquet file, or a folder of batches.")
    ] = None,
    target: Annotated[str, typer.Option(help="Label column.")] = "churn",
    rows: Annotated[int, typer.Option(help="Rows to generate when no --data is given.")] = 5_000,
    scenario: Annotated[str, typer.Option(help="Drift scenario of generated data.")] = "none",
    seed: Annotated[int, typer.Option(help="Seed for generation, split and model.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Registered model to act on; default settings.")
    ] = None,
) -> None:
    """Train the churn model, log it to MLflow and register it as the challenger."""
    from agentic_mlops.flows.train import train as train_flow

    arguments = checked_arguments(
        train_flow,
        data_path=str(data) if data else None,
        generate_rows=None if data else rows,
        target=target,
        scenario=scenario,
        seed=seed,
        model_name=model,
    )
    state = run_flow(train_flow, arguments, "Training and registering the model...", "training")
    result = state.result()
    if as_json:
        console.print_json(result.model_dump_json())
        return
    print_training(result)
    console.print(where_to_look(), highlight=False)


@app.command()
def retrain(
    data: Annotated[
        Path | None, typer.Option(help="Training window: a file or a folder of batches.")
    ] = None,
    recent: Annotated[
        Path | None, typer.Option(help="Recent production batch, to find uncovered segments.")
    ] = None,
    triage: Annotated[
        str | None, typer.Option(help="Ledger id of the triage decision that asked for it.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Label column; default: the champion's, else churn.")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows to generate when no --data is given.")] = 5_000,
    scenario: Annotated[str, typer.Option(help="Drift scenario of generated data.")] = "none",
    seed: Annotated[int, typer.Option(help="Seed for generation, splits, search, models.")] = 42,
    max_trials: Annotated[int | None, typer.Option(help="Cap on the trial count.")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Cap on the search's seconds.")] = None,
    synthesize: Annotated[
        bool | None, typer.Option(help="Force synthetic rows on or off (default: advisor).")
    ] = None,
    hand_over: Annotated[
        str, typer.Option(help="auto, deployment, event, subflow or none.")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Registered model to act on; default settings.")
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="auto (the champion's, else the target's), binary, multiclass or regression."
        ),
    ] = "auto",
) -> None:
    """Search for a better model with Ray Tune (advised by the tuning agent), register it as
    challenger and hand it to the canary rollout. Fits the model's task (binary, multiclass
    or regression). Runs on RAY_ADDRESS when set."""
    from agentic_mlops.flows.retrain import retrain as retrain_flow

    arguments = checked_arguments(
        retrain_flow,
        data_path=str(data) if data else None,
        generate_rows=None if data else rows,
        recent_path=str(recent) if recent else None,
        triage_ledger_id=triage,
        target=target,
        scenario=scenario,
        seed=seed,
        max_trials=max_trials,
        time_budget_seconds=time_budget,
        synthesize=synthesize,
        hand_over=hand_over,
        model_name=model,
        task=task,
    )
    state = run_flow(retrain_flow, arguments, None, "retraining")  # the search shows progress
    result = state.result()
    if as_json:
        console.print_json(result.model_dump_json())
        return
    print_training(result.training)
    console.print(
        f"search: {result.trials} trials ({result.stopped_early} stopped early) in "
        f"{result.search_seconds:.0f} s on {result.cluster}; best {result.best_family}; "
        f"synthetic rows {result.synthetic_rows}\n"
        f"{result.comparison.summary()}\n"
        f"advisor ({result.advisor.agent_model}): {result.advisor.decision.rationale}\n"
        f"hand-over: {result.hand_over}",
        highlight=False,
    )
    console.print(where_to_look(), highlight=False)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="File (.csv/.parquet) or, with --batches, a folder.")],
    rows: Annotated[int, typer.Option(help="Rows per file.")] = 5_000,
    scenario: Annotated[str, typer.Option(help="none, covariate, concept, quality, gradual.")] = (
        "none"
    ),
    batches: Annotated[int, typer.Option(help="Write this many batch files into a folder.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first batch.")] = 42,
) -> None:
    """Generate churn data with a drift scenario, as one file or a folder of batches."""
    from agentic_mlops.tasks.batches import DataError, write_table
    from agentic_mlops.tasks.churn import generate_batches, generate_churn

    try:
        if batches:
            frames = generate_batches(batches, rows, seed, scenario)
            for index, frame in enumerate(frames):
                write_table(frame, out / f"batch-{index:04d}.parquet")
            console.print(f"wrote {len(frames)} batches of {rows} rows to {out}")
        else:
            write_table(generate_churn(rows, seed, scenario), out)
            console.print(f"wrote {rows} rows to {out}")
    except (DataError, ValueError) as error:
        fail(str(error))


@app.command()
def demo(
    wait_for_person: Annotated[
        bool,
        typer.Option(
            "--wait-for-person",
            help="Approval mode `all`: every retrain, rollback and promotion waits for your "
            "answer in the Prefect UI.",
        ),
    ] = False,
    no_bad_model: Annotated[
        bool, typer.Option("--no-bad-model", help="Skip the second scenario (a worse model).")
    ] = False,
    with_stack: Annotated[
        bool,
        typer.Option(
            "--stack/--no-stack",
            help="Start the local stack (`up`) when none runs and leave it up, to look at the "
            "runs afterwards; --no-stack: with none running, a temporary Prefect server.",
        ),
    ] = True,
) -> None:
    """The whole loop on the embedded defaults: serve a champion to simulated customers, let
    drift arrive, and watch the system detect it, retrain, canary and promote; then catch a
    worse model in its canary and roll it back."""
    settings = load_settings()
    settings.ensure_dirs()
    starting = start_stack_early(settings) if with_stack else None
    from agentic_mlops.demo import DemoPlan, run_demo  # imported while the stack starts

    if starting is not None:
        finish_stack(settings, starting)
    announce_server()
    run_demo(console, DemoPlan(bad_model=not no_bad_model), wait_for_person=wait_for_person)
    console.print(where_to_look(), highlight=False)


@app.command(name="drift-check")
def drift_check(
    current: Annotated[Path, typer.Option(help="The new batch: a CSV or Parquet file.")],
    reference: Annotated[
        Path | None,
        typer.Option(help="Reference data. Default: the champion's stored reference."),
    ] = None,
    target: Annotated[str | None, typer.Option(help="Label column, if the batch has one.")] = (
        "churn"
    ),
    act: Annotated[
        bool, typer.Option("--act/--no-act", help="Carry out the decision (retrain, ...).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Registered model to check for; default settings.")
    ] = None,
) -> None:
    """Check a batch for quality problems and drift, triage it, and act on the decision.
    With the local stack up, its check server runs the check (the same flow, warm)."""
    for path in (current, reference):
        if path is not None and not path.exists():
            fail(f"{path}: no such file")
    answer = served_check(current, reference, target, act, model)
    if answer is None:
        server = start_server_early()
        if reference is not None:
            with errors.status(f"Profiling {reference.name} (once per file content)..."):
                profile_reference_early(reference, target, model)
        from agentic_mlops.flows.drift import drift_check as drift_flow

        wait_for_server(server)
        with errors.status("Checking quality and drift, and triaging..."):
            state = drift_flow(
                current_path=str(current),
                reference_path=str(reference) if reference else None,
                target=target,
                act=act,
                model_name=model,
                return_state=True,
            )
        failed, name, message = state.is_failed(), state.name, state.message
        result = None if failed else state.result()
    else:
        from agentic_mlops.schemas import DriftCheckResult

        failed, name, message = answer.failed, answer.state, answer.message
        result = None if failed else DriftCheckResult.model_validate(answer.result)
    if failed:
        invalid = name in ("InvalidData", "NoReference")
        fail(message or "drift check failed", 2 if invalid else 1)
    if as_json:
        print(json.dumps(result.cli_json()))
        return
    print_drift(result)


def served_check(current: Path, reference: Path | None, target, act, model):
    """The check as run by the local stack's check server, or None when there is none, it
    cannot be reached or it refuses (other settings): this process then runs it."""
    from agentic_mlops import stack
    from agentic_mlops.check_server import CheckAnswer, CheckRequest, settings_digest

    settings = load_settings()
    url = stack.check_server_url(settings.home)
    if url is None:
        return None
    if not stack.answers(f"{url}{stack.HEALTH['checks']}"):
        with errors.status(f"The local stack's check server at {url} is still starting..."):
            if not stack.wait_for_checks(settings.home):
                errors.print("Checking in this process: the check server did not start")
                return None
    request = CheckRequest(
        current_path=str(current.resolve()),
        reference_path=str(reference.resolve()) if reference else None,
        target=target,
        act=act,
        model_name=model,
        settings_digest=settings_digest(settings),
    )
    errors.print(
        f"Using the local stack: its check server at {url} runs this check",
        highlight=False,
        soft_wrap=True,
    )
    with errors.status("Checking quality and drift, and triaging..."):
        raw = stack.ask_check_server(url, request.model_dump_json())
    answer = CheckAnswer.model_validate(raw) if raw else None
    if answer is None or answer.refused:
        why = answer.refused if answer else "it did not answer"
        errors.print(f"Checking in this process instead: {why}", highlight=False, soft_wrap=True)
        return None
    return answer


def print_drift(result) -> None:
    quality = "passed" if result.quality.passed else "FAILED"
    console.print(
        f"Quality: {quality}"
        + (f" (quarantined: {result.quarantined})" if result.quarantined else ""),
        highlight=False,
    )
    for failure in result.quality.failures:
        console.print(f"  - {failure}", highlight=False)
    table = Table(
        title=f"Drift of {result.batch_id}: share {result.drift_share:.2f}, "
        f"dataset drift {result.dataset_drift}"
    )
    for column in ("column", "test", "score", "drifted"):
        table.add_column(column)
    for name, column in result.columns.items():
        style = "bold red" if column.drifted else ""
        table.add_row(name, column.test, f"{column.score:.4f}", str(column.drifted), style=style)
    console.print(table)
    decision = result.decision
    console.print(
        f"[bold]Decision: {decision.action}[/] ({decision.severity}, confidence "
        f"{decision.confidence:.2f}, by {decision.agent_model})\n{decision.rationale}",
        highlight=False,
    )
    if decision.overridden_by:
        console.print(f"Guardrail: {decision.overridden_by}", highlight=False)
    for action in result.actions_taken:
        console.print(f"Done: {action}", highlight=False)
    if result.report_path:
        pending = "" if Path(result.report_path).exists() else " (rendering in the background)"
        console.print(f"Evidently report: {result.report_path}{pending}", highlight=False)


@app.command(name="drift-report")
def drift_report(
    report: Annotated[
        Path, typer.Argument(help="The report's .html path, or the .request.json beside it.")
    ],
    nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="Lower this process's CPU priority by this much (a drift check starts its "
            "report at 19, so rendering takes only CPU that nothing else wants).",
        ),
    ] = 0,
) -> None:
    """Render a drift check's Evidently HTML report from the sample the check kept, and log
    it to the model version's MLflow run. Drift checks start this themselves after deciding."""
    import os

    from agentic_mlops.tasks.reports import publish_drift_report

    if nice:
        os.nice(nice)

    request = (
        report if report.name.endswith(".request.json") else report.with_suffix(".request.json")
    )
    if not request.exists():
        fail(f"{request}: no such file (the drift check keeps one beside its report)")
    html = publish_drift_report(request, load_settings())
    if html is None:
        fail(f"{request}: the sample and the reference share no column")
    console.print(f"Evidently report: {html}", highlight=False)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Router port on 127.0.0.1.")] = 8080,
    model: Annotated[
        str | None, typer.Option(help="Registered model to serve; default settings.")
    ] = None,
) -> None:
    """Serve the champion behind the canary router until Ctrl-C, then stop every process."""
    import signal
    import time

    from agentic_mlops.tasks import registry
    from agentic_mlops.tasks.promotion import reconcile
    from agentic_mlops.tasks.rollout import rollout_backend
    from agentic_mlops.tasks.rollout_protocol import ServingError

    settings = load_settings().for_model(model)
    champion = registry.alias_version(settings.model_name, registry.CHAMPION, settings)
    if champion is None:
        fail(f"no champion of {settings.model_name!r}: run `agentic-mlops train` or `adopt` first")
    backend = rollout_backend(settings)
    try:
        with errors.status(f"Starting the router and the model server of v{champion}..."):
            url = backend.start_router(port)
            backend.set_baseline(champion)
            repaired = reconcile(settings.model_name, settings)
    except ServingError as error:
        if settings.serving.backend == "local":  # a cluster keeps what served before
            backend.shutdown()
        fail(str(error), 1)
    if repaired:
        console.print(f"Repaired: {repaired}", highlight=False)
    if settings.serving.backend == "kubernetes":
        console.print(
            f"Serving {settings.model_name} v{champion} on Kubernetes at {url}; the cluster "
            "keeps serving (`agentic-mlops serving stop` deletes its objects).",
            highlight=False,
        )
        return
    console.print(
        f"Serving {settings.model_name} v{champion} at {url}/predict "
        f"(metrics {url}/metrics, feedback {url}/feedback). Ctrl-C stops.",
        highlight=False,
    )
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        backend.shutdown()
        console.print("stopped")


@app.command()
def adopt(
    model: Annotated[str, typer.Option(help="Registered model name in MLflow.")],
    data: Annotated[
        Path, typer.Option(help="Labelled CSV or Parquet table: the reference and holdout.")
    ],
    target: Annotated[str, typer.Option(help="Label column of the table.")],
    version: Annotated[
        int | None, typer.Option(help="Version to adopt; default champion, else newest.")
    ] = None,
    task: Annotated[str, typer.Option(help="auto, binary, multiclass or regression.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Adopt a model trained and registered outside agentic-mlops: score it on a labelled
    table, store its reference (drift profile, expectations, model card) in its MLflow run,
    and make it champion if it has none."""
    from agentic_mlops.flows.adopt import adopt as adopt_flow

    if not data.exists():
        fail(f"{data}: no such file")
    arguments = checked_arguments(
        adopt_flow,
        model_name=model,
        data_path=str(data),
        target=target,
        version=version,
        task=task,
    )
    doing = f"Scoring {model} and storing its reference..."
    result = run_flow(adopt_flow, arguments, doing, "adoption").result()
    if as_json:
        console.print_json(result.model_dump_json())
        return
    crowned = "now champion" if result.became_champion else f"champion is v{result.champion}"
    table = Table(title=f"{result.model_name} v{result.version} adopted ({result.task}, {crowned})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    top = ", ".join(list(result.feature_importance)[:5])
    console.print(
        f"score: {result.score}; most important: {top}; reference {result.reference_dir}",
        highlight=False,
    )


@app.command()
def canary(
    version: Annotated[
        int | None, typer.Option(help="Version to roll out; default challenger.")
    ] = (None),
    steps: Annotated[str | None, typer.Option(help="Percentages, e.g. 5,25,50,100.")] = None,
    step_seconds: Annotated[float | None, typer.Option(help="Longest analysis per step.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Registered model to act on; default settings.")
    ] = None,
) -> None:
    """Roll a challenger out behind the router: step traffic, judge, promote or roll back."""
    from agentic_mlops.flows.canary import canary_rollout

    try:
        percentages = [int(s) for s in steps.split(",")] if steps else None
    except ValueError:
        fail(f"invalid parameters: steps must be whole percentages like 5,25,50,100, got {steps}")
    arguments = checked_arguments(
        canary_rollout,
        version=version,
        steps=percentages,
        step_seconds=step_seconds,
        model_name=model,
    )
    state = run_flow(
        canary_rollout,
        arguments,
        "Rolling out the canary (traffic must reach the router)...",
        "canary rollout",
        invalid=("InvalidParameters", "NoChallenger"),
    )
    result = state.result()
    if result is None:
        console.print(state.message or state.name, highlight=False)
        return
    if as_json:
        console.print_json(result.model_dump_json())
        return
    table = Table(title=f"Canary v{result.version}: {result.outcome}")
    for column in ("weight", "judge", "score", "sequential", "action", "by"):
        table.add_column(column)
    for step in result.steps:
        table.add_row(
            f"{step.weight:.0%}",
            step.judge_verdict,
            f"{step.judge_score:.0f}",
            step.sequential_outcome,
            step.action,
            step.decided_by,
        )
    console.print(table)
    console.print(f"{result.reason}; champion is v{result.champion}", highlight=False)


serving = typer.Typer(help="The local serving processes: list them, stop them.")
app.add_typer(serving, name="serving")


@serving.command("status")
def serving_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Only this registered model's; default every model's.")
    ] = None,
) -> None:
    """List every serving process recorded under the home: routers and model servers."""
    from agentic_mlops.tasks.rollout import serving_status as recorded

    processes = recorded(load_settings(), model)
    if as_json:
        console.print_json(json.dumps([p.model_dump(mode="json") for p in processes]))
        return
    if not processes:
        console.print("nothing is serving (no process recorded)", highlight=False)
        return
    table = Table(title="Serving processes")
    for column in ("model", "role", "pid", "port", "version", "variant", "weight", "status"):
        table.add_column(column)
    for process in processes:
        table.add_row(
            process.model_name,
            process.role,
            str(process.pid),
            str(process.port),
            "" if process.version is None else f"v{process.version}",
            process.variant or "",
            "" if process.weight is None else f"{process.weight:.0%}",
            process.status,
        )
    console.print(table)


@serving.command("stop")
def serving_stop(
    model: Annotated[
        str | None, typer.Option(help="Only this registered model's; default every model's.")
    ] = None,
) -> None:
    """Stop every serving process recorded under the home and clean the records."""
    from agentic_mlops.tasks.rollout import stop_serving

    stopped = stop_serving(load_settings(), model)
    if not stopped:
        console.print("nothing was serving", highlight=False)
    for process in stopped:
        what = f"{process.model_name} {process.role}" + (
            "" if process.version is None else f" v{process.version}"
        )
        done = "stopped" if process.status == "alive" else "already gone (record removed)"
        console.print(f"{what} (pid {process.pid}, port {process.port}): {done}", highlight=False)


agents = typer.Typer(help="The agents: how far each model agrees with the policy.")
app.add_typer(agents, name="agents")


@agents.command("report")
def agents_report(
    limit: Annotated[int, typer.Option(help="Latest ledger decisions to read.", min=1)] = 1_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Only this registered model's decisions; default all.")
    ] = None,
) -> None:
    """Per decision point and model: cases, agreement with the policy, where they disagreed
    and whether the decision that acted proved right, fallbacks, overrides and cost."""
    from agentic_mlops.tasks import ledger
    from agentic_mlops.tasks.agent_report import agent_figures

    settings = load_settings()
    figures = agent_figures(ledger.list_decisions(model, limit=limit, settings=settings))
    if as_json:
        print(json.dumps([f.model_dump() for f in figures]))
        return
    if not figures:
        console.print("no attributed decisions in the ledger yet", highlight=False)
        return
    table = Table(title="Agents against the policy")
    for column in (
        "decision point",
        "model",
        "mode",
        "cases",
        "answered",
        "agreement",
        "fallbacks",
        "ungrounded",
        "overridden",
        "tokens in/out",
        "latency",
    ):
        table.add_column(column)
    for f in figures:
        table.add_row(
            f.decision_point,
            f.model,
            ",".join(f.modes),
            str(f.cases),
            str(f.answered),
            "" if f.agreement is None else f"{f.agreement:.0%}",
            str(f.fallbacks),
            str(f.ungrounded),
            str(f.overridden),
            f"{f.input_tokens}/{f.output_tokens}",
            f"{f.mean_latency_seconds:.2f} s",
        )
    console.print(table)
    for f in figures:
        for d in f.disagreements:
            console.print(
                f"{f.decision_point} {d.created_at}: model {d.model_action}, policy "
                f"{d.policy_action}, acted {d.acted} -> {d.acted_proved or 'outcome unknown'}",
                highlight=False,
                soft_wrap=True,
            )


@agents.command("eval")
def agents_eval(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Model string to evaluate instead of agent_model (e.g. openai:gpt-4o); repeat "
            "it to compare models, `policy` included."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each model's report as one JSON line.")
    ] = False,
) -> None:
    """Run the decision eval (every action of every decision point) on the agents' model or
    the given ones, score it with MLflow's GenAI evaluation (one run per model), and print
    accuracy, unsafe answers stopped, fallbacks and cost per decision point."""
    from agentic_mlops.agents.decision_eval import SUITE_VERSION, evaluate, log_to_mlflow
    from agentic_mlops.agents.decision_runtime import model_problem

    base_settings = load_settings().model_copy(update={"agent_tracing": False})
    chosen = []
    for name in model or [base_settings.agents.model]:
        settings = base_settings
        if model is not None:
            settings = base_settings.model_copy(update={"agent_model": name, "agent_mode": "llm"})
        if name != "policy" and (problem := model_problem(settings)):
            fail(problem)
        chosen.append(settings)
    unsafe = []
    for settings in chosen:
        with errors.status(f"Evaluating {settings.agents.model} on suite {SUITE_VERSION}..."):
            report = log_to_mlflow(evaluate(settings), settings)
        unsafe += [settings.agents.model for s in report.scores if s.unsafe_stood]
        if as_json:
            print(json.dumps(report.model_dump(mode="json")))
            continue
        table = Table(title=f"Decision eval {SUITE_VERSION}: {settings.agents.model}")
        for column in ("decision point", "cases", "accuracy", "model's own", "unsafe stopped",
                       "unsafe stood", "fallbacks", "tokens in/out", "latency"):  # fmt: skip
            table.add_column(column)
        for score in report.scores:
            table.add_row(
                score.decision_point,
                str(score.cases),
                f"{score.accuracy:.0%}",
                "" if score.model_accuracy is None else f"{score.model_accuracy:.0%}",
                str(score.unsafe_stopped),
                str(score.unsafe_stood),
                str(score.fallbacks),
                f"{score.input_tokens}/{score.output_tokens}",
                f"{score.mean_latency_seconds:.2f} s",
            )
        console.print(table)
        for result in report.results:
            if not result.correct:
                console.print(
                    f"wrong: {result.decision_point} {result.name}: {result.action} "
                    f"(acceptable: {', '.join(result.acceptable)})",
                    highlight=False,
                    soft_wrap=True,
                )
        console.print(f"MLflow run {report.mlflow_run_id}", highlight=False)
    if unsafe:
        fail(f"unsafe decisions stood for {', '.join(sorted(set(unsafe)))}", code=1)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the guarded models (those with a champion): champion, challenger, last drift
    check and last decision, and the router serving each."""
    from agentic_mlops.tasks.guarded_models import guarded_models

    listed = guarded_models(load_settings())
    if as_json:
        print(json.dumps([m.model_dump() for m in listed]))
        return
    if not listed:
        console.print("no guarded model: `agentic-mlops train` or `adopt` one", highlight=False)
        return
    table = Table(title="Guarded models")
    for column in ("model", "champion", "challenger", "last check", "last decision", "serving"):
        table.add_column(column)
    for m in listed:
        table.add_row(
            m.name,
            f"v{m.champion}",
            "" if m.challenger is None else f"v{m.challenger}",
            f"{m.last_check} at {m.last_check_at[:16]}" if m.last_check_at else "never",
            f"{m.last_decision} at {m.last_decision_at[:16]}" if m.last_decision_at else "none",
            m.router_url or "",
        )
    console.print(table)


k8s = typer.Typer(help="Kubernetes: render the serving manifests for review or GitOps.")
app.add_typer(k8s, name="k8s")


@k8s.command("render")
def k8s_render(
    version: Annotated[int, typer.Option(help="Model version served as stable.")],
    out: Annotated[Path, typer.Option(help="Folder that receives one YAML file per object.")],
    model: Annotated[str | None, typer.Option(help="Registered model; default settings.")] = None,
    image: Annotated[str, typer.Option(help="Model-server container image.")] = (
        "agentic-mlops/model-server:latest"
    ),
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    canary: Annotated[int | None, typer.Option(help="Also render this version as canary.")] = None,
    weight: Annotated[float, typer.Option(help="Canary share of traffic, 0 to 1.")] = 0.0,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Gateway to route through: one Service per track and an HTTPRoute whose "
            "parentRefs name it. Default kubernetes_gateway; none splits by pods."
        ),
    ] = None,
) -> None:
    """Write the Deployments, Services and route of a model version, validated offline."""
    from pydantic import ValidationError

    from agentic_mlops.deployments.kubernetes.manifests import (
        GatewayRef,
        KubernetesServing,
        ManifestError,
        write_manifests,
    )

    settings = load_settings()
    gateway = gateway or settings.kubernetes.gateway
    try:
        serving = KubernetesServing(
            image=image,
            namespace=namespace,
            tracking_uri=settings.tracking_uri(),
            gateway=GatewayRef(name=gateway) if gateway else None,
        )
        written = write_manifests(
            model or settings.model_name,
            version,
            out,
            serving,
            canary_version=canary,
            canary_weight=weight,
        )
    except ValidationError as error:
        fail("; ".join(problem["msg"].removeprefix("Value error, ") for problem in error.errors()))
    except (ManifestError, ValueError) as error:
        fail(str(error))
    for path in written:
        console.print(str(path), highlight=False)


@app.command()
def notify(
    webhook: Annotated[str, typer.Option(help="URL that receives {subject, body} as JSON.")],
) -> None:
    """Send every drift escalation to a webhook (a Prefect block and automation)."""
    from agentic_mlops.deployments.automations import install_escalation_webhook

    if not webhook.startswith(("http://", "https://")):
        fail(f"{webhook}: not an http(s) URL")
    block_id, automation_id = install_escalation_webhook(webhook)
    console.print(
        f"escalations go to {webhook} (block {block_id}, automation {automation_id})",
        highlight=False,
    )


@app.command()
def up() -> None:
    """Start the local stack in the background: a Prefect server on the home's SQLite and the
    MLflow UI on the home's tracking store. Every command and flow uses it until `down`."""

    settings = load_settings()
    settings.ensure_dirs()
    finish_stack(settings, start_stack(settings))


def finish_stack(settings, starting) -> None:
    """Wait for the stack `stack.start` set going and say what runs where; a one-line error
    (exit 1) when a process fails, with what it started stopped again."""
    from agentic_mlops import stack

    try:
        with errors.status("Starting the Prefect server and the MLflow UI..."):
            started = stack.finish(starting)
    except stack.StackError as error:
        fail(str(error).splitlines()[0] + f" (logs in {stack.stack_dir(settings.home)})", 1)
    for role, (process, how) in started.items():
        if process is None:
            console.print(f"{role}: {how} (tracking is {settings.tracking_uri()})")
            continue
        notes = {
            "checks": "; it loads its libraries on its own, and a drift check waits for it",
            "mlflow": "; the UI answers in a few seconds (commands use the store itself)",
        }
        console.print(
            f"{role}: {how} at {process.url} (pid {process.pid}, log {process.log})"
            + (notes.get(role, "") if how == "starting" else ""),
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def down() -> None:
    """Stop the local stack; safe to run twice."""
    from agentic_mlops import stack

    stopped = stack.down(load_settings().home)
    if not stopped:
        console.print("the local stack is not running (nothing recorded)", highlight=False)
    for process, was_running in stopped:
        done = "stopped" if was_running else "already gone (stale record removed)"
        console.print(
            f"{process.role} (pid {process.pid}, {process.url}): {done}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """Say what of the local stack runs: each process's pid, URL and log."""
    from agentic_mlops import stack

    seen = stack.status(load_settings().home)
    if as_json:
        print(stack.as_json(seen))
        return
    if not seen:
        console.print("the local stack is not running (`agentic-mlops up` starts it)")
    for process, alive in seen:
        state = "running" if alive else "not running (stale record removed)"
        console.print(
            f"{process.role}: {state} at {process.url} (pid {process.pid}, since "
            f"{process.started_at}, log {process.log})",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def where() -> None:
    """Print where the embedded defaults keep their state, and how to open the UIs."""
    console.print(where_to_look(), highlight=False)


@app.command(name="settings")
def show_settings(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only check the settings and the agent model; one line, exit 2 if bad."
        ),
    ] = False,
    env: Annotated[
        bool,
        typer.Option(
            "--env",
            help="One line per variable: its nested name (AGENTIC_MLOPS_CANARY__STEPS), its "
            "flat name (AGENTIC_MLOPS_CANARY_STEPS) and the value in force.",
        ),
    ] = False,
) -> None:
    """Print the settings in force as JSON, by section (secrets masked). A section's field is
    read from AGENTIC_MLOPS_<SECTION>__<FIELD> or its flat name (`--env` lists both)."""
    from agentic_mlops.settings import variable_names

    settings = load_settings()
    if check:
        from agentic_mlops.agents.decision_runtime import model_string

        model = "policy" if settings.agents.model == "policy" else model_string(settings)
        where = f" at {settings.agents.base_url}" if settings.agents.base_url else ""
        console.print(
            f"settings ok; agents decide with {model}{where}", highlight=False, soft_wrap=True
        )
        return
    values = json.loads(settings.model_dump_json())
    if env:
        for name, value in values.items():
            fields = value.items() if isinstance(value, dict) else [(None, value)]
            for field, shown in fields:
                where = (name,) if field is None else (name, field)
                console.print(
                    f"{variable_names(where)} = {json.dumps(shown)}",
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                )
        return
    values["tracking_uri_in_force"] = settings.tracking_uri()
    console.print_json(json.dumps(values))


@app.command()
def mcp(
    http: Annotated[
        bool, typer.Option("--http", help="Streamable HTTP instead of stdio (needs a token).")
    ] = False,
    host: Annotated[
        str | None, typer.Option(help="HTTP address; default mcp_host (loopback).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port; default mcp_port.")] = None,
) -> None:
    """Serve the MCP server: stdio for a local assistant, or HTTP with a bearer token."""
    from agentic_mlops.mcp_server import StartRefused, serve

    try:
        serve(http=http, host=host, port=port, settings=load_settings())
    except StartRefused as error:
        fail(str(error))


def main() -> None:
    """The `agentic-mlops` program: run the command, then end the process at once (see
    `runtime.quick_exit`) instead of waiting for Prefect's and MLflow's exit handlers."""
    from agentic_mlops.runtime import quick_exit

    try:
        app()
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    if isinstance(code, str):
        errors.print(code)
        code = 1
    quick_exit(code or 0)


if __name__ == "__main__":
    main()
