"""A small resumable stage runner: named stages, a marker per finished stage, a log per stage and
a progress display (stage k/n, elapsed, estimated time left).

A stage is finished when its marker `OUT/stages/<name>.json` exists; the marker is written
atomically after the stage returns, with the stage's result (a small JSON-able dict) and its
duration. A rerun skips finished stages and returns their stored results; a stage that was
interrupted has no marker, so it runs again and is expected to resume through its own
mechanism (the trainer's `resume=True`, the feature store's skip of images it holds).

While a stage runs, its stdout and stderr (and so tqdm bars and warnings) go to
`OUT/logs/<name>.log`; the terminal shows only the runner's progress lines.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from vilbert.io.atomic import write_json

StageFn = Callable[[], dict[str, Any] | None]


# Stages expected to take less than this (config files, reused work) do not rescale the others'
# estimates: one taking 0 s of an estimated 1 s would otherwise make everything left look instant.
MIN_ESTIMATE_FOR_RATIO = 10.0


@dataclass
class Stage:
    """One step of a plan: `run()` does the work and returns a JSON-able result (or None)."""

    name: str
    run: StageFn
    estimate_s: float = 60.0  # expected seconds, for the time-left display
    description: str = ""


class StageError(RuntimeError):
    """A stage failed; the message names it and its log."""


@dataclass
class StageRunner:
    """Run stages in order into `out_dir`, skipping those whose marker exists."""

    out_dir: Path
    stream: TextIO | None = None  # progress lines (default: the real stderr)
    heartbeat_s: float = 0.0  # > 0: also print a progress line every this many seconds
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds of this process per stage

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.stream = self.stream or sys.__stderr__ or sys.stderr

    def marker(self, name: str) -> Path:
        return self.out_dir / "stages" / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.out_dir / "logs" / f"{name}.log"

    def is_done(self, name: str) -> bool:
        """A stage is done when its marker reads; a damaged marker is moved aside (and said so) and
        the stage runs again, resuming through its own mechanism."""
        marker = self.marker(name)
        if not marker.is_file():
            return False
        try:
            stored = json.loads(marker.read_text(encoding="utf-8"))
            if isinstance(stored, dict) and "result" in stored:
                return True
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        marker.replace(marker.with_suffix(".damaged"))
        self._say(f"{marker} was damaged (moved to {marker.with_suffix('.damaged').name}): stage {name} runs again")
        return False

    def load(self, name: str) -> dict[str, Any]:
        """The stored marker of a finished stage: {"name", "seconds", "result"}."""
        return json.loads(self.marker(name).read_text())

    def run(self, stages: list[Stage]) -> dict[str, Any]:
        """Run every unfinished stage; returns name -> result for all stages."""
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {duplicates}")
        start = time.perf_counter()
        # Actual / estimated time of the stages run so far corrects the estimates of the rest.
        spent = estimated = 0.0
        for k, stage in enumerate(stages, 1):
            if self.is_done(stage.name):
                stored = self.load(stage.name)
                self.results[stage.name] = stored.get("result")
                self.timings[stage.name] = float(stored.get("seconds", 0.0))
                self.cpu_timings[stage.name] = float(stored.get("cpu_seconds", 0.0))
                self._say(f"[{k}/{len(stages)}] {stage.name}: done earlier ({_fmt(self.timings[stage.name])}), reused")
                continue
            ratio = spent / estimated if estimated > 0 else 1.0
            left = ratio * sum(s.estimate_s for s in stages[k - 1:] if not self.is_done(s.name))
            elapsed = time.perf_counter() - start
            what = f" - {stage.description}" if stage.description else ""
            self._say(f"[{k}/{len(stages)}] {stage.name}{what} (elapsed {_fmt(elapsed)}, about {_fmt(left)} left)")
            seconds = self._run_one(stage, k, len(stages), start, ratio * stage.estimate_s, left)
            if stage.estimate_s >= MIN_ESTIMATE_FOR_RATIO:  # an instant stage says nothing of the rest
                spent += seconds
                estimated += stage.estimate_s
            self._say(f"[{k}/{len(stages)}] {stage.name}: finished in {_fmt(seconds)}")
        self._say(f"all {len(stages)} stages done (this run {_fmt(time.perf_counter() - start)})")
        return self.results

    def _run_one(self, stage: Stage, k: int, n: int, start: float, expected: float, left: float) -> float:
        log = self.log_path(stage.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        stop = threading.Event()
        ticker = None
        if self.heartbeat_s > 0:
            ticker = threading.Thread(target=self._tick, args=(stop, stage.name, k, n, start, t0, expected, left),
                                      daemon=True)
            ticker.start()
        try:
            with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                print(f"=== stage {stage.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
                try:
                    result = stage.run()
                except BaseException:
                    traceback.print_exc()
                    raise
                print(f"=== stage {stage.name} finished in {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as err:
            raise StageError(f"stage {stage.name!r} failed: {type(err).__name__}: {err} (log: {log})") from err
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
        seconds = time.perf_counter() - t0
        # CPU seconds too: on a shared machine they say more about the stage's cost than wall time.
        cpu = time.process_time() - cpu0
        write_json(self.marker(stage.name), {"name": stage.name, "seconds": round(seconds, 3),
                                             "cpu_seconds": round(cpu, 3), "result": result})
        self.results[stage.name] = result
        self.timings[stage.name] = seconds
        self.cpu_timings[stage.name] = cpu
        return seconds

    def _tick(self, stop: threading.Event, name: str, k: int, n: int, start: float, t0: float,
              expected: float, left: float) -> None:
        while not stop.wait(self.heartbeat_s):
            now = time.perf_counter()
            in_stage = now - t0
            remaining = max(left - in_stage, max(expected - in_stage, 0.0))
            self._say(f"[{k}/{n}] {name}: running {_fmt(in_stage)} (elapsed {_fmt(now - start)}, "
                      f"about {_fmt(remaining)} left)")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
