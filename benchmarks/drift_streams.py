"""Drift-detection quality on standard concept-drift streams and on the churn scenarios.

Streams, each with its drift starting at a known batch:

- river's generators: Agrawal (classification function 0 -> 2, and a prior shift to balanced
  classes), SEA (threshold 8 -> 7, 10% label noise), Hyperplane (a new random hyperplane),
  RandomRBF (new centroids: inputs and concept move), abrupt and gradual through river's
  `ConceptDriftStream`; FriedmanDrift's `gra` (global abrupt), `gsg` (global gradual: half
  the rows follow the new function for six batches, then all) and `lea` (local, expanding);
- the churn scenarios of `tasks/churn.py`: `covariate` (a price rise), `concept` (customers
  react differently, the inputs stay) and `gradual` (both, growing to full over six batches).

Each stream is cut into batches of `BATCH_ROWS`: a reference window of `REFERENCE_BATCHES`
batches, then `CLEAN_BATCHES` drift-free batches, then `DRIFT_BATCHES` from the onset on. In
`ConceptDriftStream`'s gradual switches the new concept makes up about 2% of the onset batch,
half of the batch three later and all of it six later.

The detectors see the same batches, in order:

- ours: the per-column tests against a profile of the reference window (`compare_to_profile`,
  Evidently's tests and thresholds) and the CUSUM across batches (`cusum_step`), with the
  default settings; a batch is flagged when the tests find dataset drift (as Evidently
  defines it) or the CUSUM alarms (which then starts afresh);
- Evidently's default `DataDriftPreset` on each batch against the reference window, flagged
  by its dataset-drift verdict (at least half the columns drifted); for context, the same
  report read per column (a batch is flagged when any one column drifted), which is what a
  single-batch test without the CUSUM's evidence across batches gives;
- river's ADWIN on the error stream of a model fitted on the reference window (0/1 errors of
  the churn pipeline's classifier; for FriedmanDrift's regression, an error is a residual
  beyond the 90th percentile of held-out reference residuals); a batch is flagged when ADWIN
  detects a change while reading its errors. ADWIN needs each row's label; the others look at
  the inputs only.

Per stream and detector: the delay (batches from the onset to the first flag, 0 being the
onset batch), a miss when nothing is flagged in the `DRIFT_BATCHES`, and flags on the
drift-free batches (false alarms). A detector's feed stops at its first flag after the onset.

River's function switches (Agrawal 0 -> 2, SEA, Hyperplane, FriedmanDrift) and churn's
`concept` change how the label depends on the inputs and leave the inputs as they were: no
test on the inputs can see them without labels, ours included, and the figures say so. The
drift-check flow judges labelled batches on performance as well (ROC AUC against training,
calibration), which catches churn's `concept` (tests/flows/test_drift_flow.py); that path is
not measured here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Row = dict[str, object]
BATCH_ROWS = 500
REFERENCE_BATCHES = 4
CLEAN_BATCHES = 8
DRIFT_BATCHES = 10
TRANSITION_BATCHES = 3
"""A gradual drift's sigmoid is centred this many batches after its onset."""
RESIDUAL_QUANTILE = 0.9

Change = Literal["abrupt", "gradual"]
Moves = Literal["inputs", "concept", "inputs and concept"]


@dataclass(frozen=True)
class Stream:
    """A labelled stream cut into a reference window and batches, with its drift's onset."""

    name: str
    change: Change
    moves: Moves
    target: str
    regression: bool
    reference: pd.DataFrame
    batches: list[pd.DataFrame]
    onset: int = CLEAN_BATCHES

    @property
    def features(self) -> pd.DataFrame:
        return self.reference.drop(columns=[self.target])


@dataclass(frozen=True)
class Outcome:
    """How one detector did on one stream."""

    false_alarms: int
    clean_batches: int
    delay: int | None
    batches_fed: int

    @property
    def missed(self) -> bool:
        return self.delay is None


def _onset_row() -> int:
    return (REFERENCE_BATCHES + CLEAN_BATCHES) * BATCH_ROWS


def _total_rows() -> int:
    return (REFERENCE_BATCHES + CLEAN_BATCHES + DRIFT_BATCHES) * BATCH_ROWS


def river_stream(
    name: str, dataset, change: Change, moves: Moves, regression: bool = False
) -> Stream:
    """Take a river dataset's rows and cut them into the reference window and batches."""
    rows = list(dataset.take(_total_rows()))
    frame = pd.DataFrame.from_records([x for x, _ in rows])
    frame.columns = [c if isinstance(c, str) else f"x{c}" for c in frame.columns]
    frame["y"] = np.asarray([y for _, y in rows], dtype=float if regression else int)
    split = REFERENCE_BATCHES * BATCH_ROWS
    batches = [
        frame.iloc[start : start + BATCH_ROWS].reset_index(drop=True)
        for start in range(split, len(frame), BATCH_ROWS)
    ]
    return Stream(name, change, moves, "y", regression, frame.iloc[:split], batches)


def _switch(before, after, change: Change, seed: int):
    """River's ConceptDriftStream from `before` to `after`, starting at the onset batch.

    Its sigmoid is centred one width after the onset, so about 2% of the rows just before
    the onset are new. An abrupt switch is a sigmoid a hundredth of the onset row wide (an
    exact step overflows river's `math.exp`): it is complete a fifth of the way into the
    onset batch.
    """
    from river.datasets import synth

    onset = _onset_row()
    width = TRANSITION_BATCHES * BATCH_ROWS if change == "gradual" else onset // 100
    return synth.ConceptDriftStream(before, after, position=onset + width, width=width, seed=seed)


def river_streams(seed: int = 7) -> list[Stream]:
    """Agrawal, SEA, Hyperplane and FriedmanDrift with drift at the onset batch."""
    return _river_classification(seed) + _river_regression(seed)


def _river_classification(seed: int) -> list[Stream]:
    """Agrawal, SEA, Hyperplane and RandomRBF, abrupt and gradual; Agrawal's prior shift."""
    from river.datasets import synth

    streams = []
    for change in ("abrupt", "gradual"):
        streams += [
            river_stream(
                f"Agrawal function 0 -> 2, {change}",
                _switch(synth.Agrawal(0, seed=seed), synth.Agrawal(2, seed=seed + 1), change, seed),
                change,
                "concept",
            ),
            river_stream(
                f"SEA threshold 8 -> 7, {change}",
                _switch(
                    synth.SEA(variant=0, noise=0.1, seed=seed),
                    synth.SEA(variant=2, noise=0.1, seed=seed + 1),
                    change,
                    seed,
                ),
                change,
                "concept",
            ),
            river_stream(
                f"Hyperplane rotated, {change}",
                _switch(
                    synth.Hyperplane(seed=seed, n_features=5),
                    synth.Hyperplane(seed=seed + 1, n_features=5),
                    change,
                    seed,
                ),
                change,
                "concept",
            ),
            river_stream(
                f"RandomRBF new centroids, {change}",
                _switch(
                    synth.RandomRBF(seed, seed, n_features=5, n_centroids=20),
                    synth.RandomRBF(seed + 1, seed + 1, n_features=5, n_centroids=20),
                    change,
                    seed,
                ),
                change,
                "inputs and concept",
            ),
        ]
    streams += [
        river_stream(
            "Agrawal balanced classes (prior shift), abrupt",
            _switch(
                synth.Agrawal(0, seed=seed),
                synth.Agrawal(0, seed=seed + 1, balance_classes=True),
                "abrupt",
                seed,
            ),
            "abrupt",
            "inputs",
        )
    ]
    return streams


def _river_regression(seed: int) -> list[Stream]:
    """FriedmanDrift: global abrupt, global gradual, local expanding."""
    from river.datasets import synth

    onset, batch = _onset_row(), BATCH_ROWS
    return [
        river_stream(
            "FriedmanDrift gra (global abrupt)",
            synth.FriedmanDrift("gra", position=(onset, 10 * onset), seed=seed),
            "abrupt",
            "concept",
            regression=True,
        ),
        river_stream(
            "FriedmanDrift gsg (global gradual)",
            synth.FriedmanDrift(
                "gsg",
                position=(onset, 10 * onset),
                transition_window=2 * TRANSITION_BATCHES * batch,
                seed=seed,
            ),
            "gradual",
            "concept",
            regression=True,
        ),
        river_stream(
            "FriedmanDrift lea (local, expanding)",
            synth.FriedmanDrift(
                "lea", position=(onset, onset + 3 * batch, onset + 6 * batch), seed=seed
            ),
            "abrupt",
            "concept",
            regression=True,
        ),
    ]


def churn_streams(seed: int = 500) -> list[Stream]:
    """The churn scenarios: a price rise, a change in behaviour, and both growing gradually."""
    from agentic_mlops.tasks.churn import TARGET, generate_churn

    reference = generate_churn(REFERENCE_BATCHES * BATCH_ROWS, seed)
    clean = [generate_churn(BATCH_ROWS, seed + 1 + i) for i in range(CLEAN_BATCHES)]

    def drifted(scenario, severity) -> list[pd.DataFrame]:
        first = seed + 1 + CLEAN_BATCHES
        return [
            generate_churn(BATCH_ROWS, first + i, scenario, severity(i))
            for i in range(DRIFT_BATCHES)
        ]

    def full(_: int) -> float:
        return 1.0

    def ramp(i: int) -> float:
        return min((i + 1) / (2 * TRANSITION_BATCHES), 1.0)

    return [
        Stream(
            "churn covariate (price rise)",
            "abrupt",
            "inputs",
            TARGET,
            False,
            reference,
            clean + drifted("covariate", full),
        ),
        Stream(
            "churn concept (behaviour change)",
            "abrupt",
            "concept",
            TARGET,
            False,
            reference,
            clean + drifted("concept", full),
        ),
        Stream(
            "churn gradual (both, growing)",
            "gradual",
            "inputs and concept",
            TARGET,
            False,
            reference,
            clean + drifted("gradual", ramp),
        ),
    ]


class ProfileAndCusum:
    """Ours: the per-column tests against a stored profile, and the CUSUM across batches."""

    readings = ("ours",)

    def __init__(self, stream: Stream):
        from agentic_mlops.settings import Settings
        from agentic_mlops.tasks.drift import CusumState, build_profile

        self.settings = Settings(drift_threads=1)
        self.profile = build_profile(stream.features)
        self.state = CusumState()
        self.target = stream.target

    def observe(self, batch: pd.DataFrame) -> dict[str, bool]:
        from agentic_mlops.tasks.drift import CusumState, compare_to_profile, cusum_step

        settings = self.settings
        result = compare_to_profile(
            self.profile, batch.drop(columns=[self.target]), settings=settings
        )
        self.state = cusum_step(
            self.state,
            result,
            settings.sequential.k,
            settings.sequential.h,
            settings.sequential.min_effect,
        )
        alarm = bool(self.state.alarm_columns)
        if alarm:
            self.state = CusumState()
        return {"ours": alarm or result.dataset_drift}


class EvidentlyPerBatch:
    """Evidently's default `DataDriftPreset` on each batch against the reference window."""

    readings = ("Evidently", "Evidently: any column")
    """Its dataset-drift flag, and, for context, whether any single column drifted."""

    def __init__(self, stream: Stream):
        from agentic_mlops.tasks.drift import build_profile

        self.reference = stream.features
        self.profile = build_profile(self.reference)
        self.target = stream.target

    def observe(self, batch: pd.DataFrame) -> dict[str, bool]:
        from agentic_mlops.tasks.drift import evidently_report

        snapshot = evidently_report(self.profile, self.reference, batch.drop(columns=[self.target]))
        dataset, columns = evidently_verdicts(snapshot)
        return {"Evidently": dataset, "Evidently: any column": any(columns.values())}


def evidently_verdicts(snapshot, drift_share: float = 0.5) -> tuple[bool, dict[str, bool]]:
    """Evidently's dataset-drift verdict (at least `drift_share` of the columns drifted) and
    each column's, read off its metrics: a distance drifts at or above its threshold, a
    p-value below it."""
    share, columns = None, {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            score, threshold = float(metric["value"]), float(config["threshold"])
            distance = "distance" in config.get("method", "")
            columns[config["column"]] = score >= threshold if distance else score < threshold
    if share is None:
        raise ValueError("the snapshot has no DriftedColumnsCount metric")
    return share >= drift_share, columns


class AdwinOnErrors:
    """River's ADWIN on the 0/1 errors of a model fitted on the reference window."""

    readings = ("ADWIN on errors",)

    def __init__(self, stream: Stream, seed: int = 42):
        from river.drift import ADWIN

        self.target, self.regression = stream.target, stream.regression
        fit_rows = int(0.75 * len(stream.reference))
        fit, held_out = stream.reference.iloc[:fit_rows], stream.reference.iloc[fit_rows:]
        self.model = fit_reference_model(fit, stream.target, stream.regression, seed)
        self.limit = None
        if stream.regression:
            residuals = np.abs(self._residuals(held_out))
            self.limit = float(np.quantile(residuals, RESIDUAL_QUANTILE))
        self.detector = ADWIN()

    def _residuals(self, batch: pd.DataFrame) -> np.ndarray:
        predicted = self.model.predict(batch.drop(columns=[self.target]))
        return batch[self.target].to_numpy(dtype=float) - predicted

    def errors(self, batch: pd.DataFrame) -> np.ndarray:
        if self.regression:
            return (np.abs(self._residuals(batch)) > self.limit).astype(int)
        predicted = self.model.predict(batch.drop(columns=[self.target]))
        return (predicted != batch[self.target].to_numpy()).astype(int)

    def observe(self, batch: pd.DataFrame) -> dict[str, bool]:
        found = False
        for error in self.errors(batch):
            self.detector.update(int(error))
            found = found or self.detector.drift_detected
        return {"ADWIN on errors": found}


def fit_reference_model(frame: pd.DataFrame, target: str, regression: bool, seed: int):
    """The churn pipeline's classifier (or a gradient-boosting regressor) on reference rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from agentic_mlops.tasks.training import Hyperparameters, build_pipeline, feature_columns

    x, y = frame.drop(columns=[target]), frame[target]
    if regression:
        return HistGradientBoostingRegressor(max_iter=100, random_state=seed).fit(x, y)
    numeric, categorical = feature_columns(frame, target)
    model = build_pipeline(numeric, categorical, Hyperparameters(max_iter=100), seed)
    return model.fit(x, y.astype(int))


def run_detector(detector, stream: Stream) -> dict[str, Outcome]:
    """Feed the batches in order; per reading, count flags before the onset and find the
    first flag from the onset on (the feed stops once every reading has flagged)."""
    clean = stream.batches[: stream.onset]
    false_alarms = dict.fromkeys(detector.readings, 0)
    for batch in clean:
        for reading, flagged in detector.observe(batch).items():
            false_alarms[reading] += flagged
    delays: dict[str, int] = {}
    fed = len(clean)
    for delay, batch in enumerate(stream.batches[stream.onset :]):
        fed += 1
        for reading, flagged in detector.observe(batch).items():
            if flagged:
                delays.setdefault(reading, delay)
        if len(delays) == len(detector.readings):
            break
    return {r: Outcome(false_alarms[r], len(clean), delays.get(r), fed) for r in detector.readings}


DETECTORS = (ProfileAndCusum, EvidentlyPerBatch, AdwinOnErrors)


def _delay(outcome: Outcome) -> str:
    return "missed" if outcome.missed else str(outcome.delay)


def _mean_delay(outcomes: list[Outcome]) -> float | None:
    found = [o.delay for o in outcomes if not o.missed]
    return round(float(np.mean(found)), 2) if found else None


def _per_100(outcomes: list[Outcome]) -> float:
    alarms = sum(o.false_alarms for o in outcomes)
    return round(100 * alarms / sum(o.clean_batches for o in outcomes), 2)


Results = dict[str, dict[str, Outcome]]


def run_streams(streams: list[Stream]) -> tuple[Results, dict[str, float]]:
    """Every detector on every stream: the outcomes per stream and reading, and each
    detector's mean time per batch fed (ms)."""
    results: Results = {}
    seconds = dict.fromkeys((d.readings[0] for d in DETECTORS), 0.0)
    fed = dict.fromkeys(seconds, 0)
    for stream in streams:
        results[stream.name] = {}
        for detector in DETECTORS:
            began = time.perf_counter()
            outcomes = run_detector(detector(stream), stream)
            seconds[detector.readings[0]] += time.perf_counter() - began
            fed[detector.readings[0]] += outcomes[detector.readings[0]].batches_fed
            results[stream.name].update(outcomes)
    return results, {label: 1_000 * seconds[label] / fed[label] for label in seconds}


def stream_rows(streams: list[Stream], results: Results) -> list[Row]:
    """Per stream: batches to detect, ours against each baseline."""
    rows: list[Row] = []
    for stream in streams:
        outcome = results[stream.name]
        rows.append(
            {
                "name": f"drift streams: {stream.name} ({stream.moves} move), batches to "
                "detect, ours (baseline: Evidently dataset drift / Evidently any column / "
                "ADWIN on errors)",
                "value": _delay(outcome["ours"]),
                "unit": "" if outcome["ours"].missed else "batches",
                "baseline": " / ".join(
                    _delay(outcome[r])
                    for r in ("Evidently", "Evidently: any column", "ADWIN on errors")
                ),
            }
        )
    return rows


INPUTS, CONCEPT = ("inputs", "inputs and concept"), ("concept",)
EVERYTHING = INPUTS + CONCEPT


def detection_rows(by: Callable[[str, tuple[str, ...]], list[Outcome]]) -> list[Row]:
    """Input drift found and how fast, against Evidently; concept-only drift found."""
    ours_in, evidently_in = by("ours", INPUTS), by("Evidently", INPUTS)
    n_inputs, n_concept = len(ours_in), len(by("ours", CONCEPT))
    ours_missed = sum(o.missed for o in ours_in)
    evidently_missed = sum(o.missed for o in evidently_in)
    ours_delay, evidently_delay = _mean_delay(ours_in), _mean_delay(evidently_in)
    rows: list[Row] = [
        {
            "name": f"drift streams: input drift detected ({n_inputs} streams), ours "
            "(baseline: Evidently dataset drift)",
            "value": f"{n_inputs - ours_missed}/{n_inputs}",
            "baseline": f"{n_inputs - evidently_missed}/{n_inputs}",
            "target": ">= Evidently",
            "met": ours_missed <= evidently_missed,
        },
        {
            "name": "drift streams: mean batches to detect input drift where detected, ours "
            "(baseline: Evidently dataset drift)",
            "value": "none detected" if ours_delay is None else ours_delay,
            "unit": "batches",
            "baseline": "none detected" if evidently_delay is None else evidently_delay,
            "ratio": round(ours_delay / evidently_delay, 2)
            if ours_delay is not None and evidently_delay
            else "",
            "target": "<= Evidently",
            "met": ours_delay is not None
            and (evidently_delay is None or ours_delay <= evidently_delay),
        },
    ]
    for reading in ("ours", "Evidently", "ADWIN on errors"):
        missed = sum(o.missed for o in by(reading, CONCEPT))
        rows.append(
            {
                "name": f"drift streams: concept-only drift detected ({n_concept} streams, "
                f"inputs unchanged), {reading}"
                + (" (needs labels)" if reading.startswith("ADWIN") else ", inputs only"),
                "value": f"{n_concept - missed}/{n_concept}",
                "headline": True,
            }
        )
    return rows


def alarm_rows(by: Callable[[str, tuple[str, ...]], list[Outcome]]) -> list[Row]:
    """ADWIN's delay, false alarms per 100 drift-free batches of each detector."""
    adwin_delay = _mean_delay(by("ADWIN on errors", EVERYTHING))
    clean_total = sum(o.clean_batches for o in by("ours", EVERYTHING))
    ours_rate = _per_100(by("ours", EVERYTHING))
    return [
        {
            "name": "drift streams: mean batches to detect where detected, ADWIN on errors, "
            "all streams",
            "value": "none detected" if adwin_delay is None else adwin_delay,
            "unit": "batches",
        },
        {
            "name": f"drift streams: false alarms per 100 drift-free batches ({clean_total}), "
            "ours (baseline: Evidently dataset drift)",
            "value": ours_rate,
            "unit": "per 100",
            "baseline": _per_100(by("Evidently", EVERYTHING)),
            "target": "<= 1 per 100",
            "met": ours_rate <= 1,
        },
        {
            "name": f"drift streams: false alarms per 100 drift-free batches ({clean_total}), "
            "Evidently any single column",
            "value": _per_100(by("Evidently: any column", EVERYTHING)),
            "unit": "per 100",
        },
        {
            "name": f"drift streams: false alarms per 100 drift-free batches ({clean_total}), "
            "ADWIN on errors",
            "value": _per_100(by("ADWIN on errors", EVERYTHING)),
            "unit": "per 100",
        },
    ]


def bench_drift_streams() -> list[Row]:
    start = time.perf_counter()
    streams = river_streams() + churn_streams()
    results, per_batch_ms = run_streams(streams)

    def by(reading: str, moves: tuple[str, ...]) -> list[Outcome]:
        return [results[s.name][reading] for s in streams if s.moves in moves]

    rows = stream_rows(streams, results) + detection_rows(by) + alarm_rows(by)
    rows += [
        {
            "name": f"drift streams: time per batch of {BATCH_ROWS} rows, reference window "
            f"{REFERENCE_BATCHES * BATCH_ROWS} rows, ours (baseline: Evidently; ADWIN incl. "
            f"fitting its model: {per_batch_ms['ADWIN on errors']:.1f} ms)",
            "value": round(per_batch_ms["ours"], 1),
            "unit": "ms",
            "baseline": round(per_batch_ms["Evidently"], 1),
            "ratio": round(per_batch_ms["ours"] / per_batch_ms["Evidently"], 3),
        },
        {
            "name": "drift streams: benchmark wall time (generation and every detector)",
            "value": round(time.perf_counter() - start, 1),
            "unit": "s",
        },
    ]
    return rows
