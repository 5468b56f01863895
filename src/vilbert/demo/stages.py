"""A small resumable stage runner: named stages, a marker per finished stage, a log per stage and
a progress display (stage k/n, elapsed, estimated time left).

A stage is finished when its marker `OUT/stages/<name>.json` exists; the marker is written
atomically after the stage returns, with the stage's result (a small JSON-able dict) and its
duration. A rerun skips finished stages and returns their stored results; a stage that was
interrupted has no marker, so it runs again and is expected to resume through its own
mechanism (the trainer's `resume=True`, the feature store's skip of images it holds).

While a stage runs, its stdout and stderr (and so tqdm bars and warnings) go to
`OUT/logs/<name>.log`; the terminal shows only the runner's progress lines.

With `jobs` > 1 the runner starts each stage in a process of its own (a command the caller gives,
which runs that one stage here with `run_here` and so writes its marker), up to `jobs` at once,
each once the stages it `needs` are finished. The command should give each stage the torch threads
one at a time would get (run_demo's does): a stage's numbers depend on its thread count (a
pretraining's float sums fall differently at 1 and 2 threads), so only that keeps the results.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

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
    needs: tuple[str, ...] = ()  # stages that must be finished first (when stages run side by side)


class StageError(RuntimeError):
    """A stage failed; the message names it and its log."""


# Launch(stage name) -> the command that runs that one stage in a process of its own.
Launch = Callable[[str], list[str]]
POLL_S = 0.2


@dataclass
class StageRunner:
    """Run stages in order into `out_dir`, skipping those whose marker exists."""

    out_dir: Path
    stream: TextIO | None = None  # progress lines (default: the real stderr)
    heartbeat_s: float = 0.0  # > 0: also print a progress line every this many seconds
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds of this process per stage
    threads: dict[str, int] = field(default_factory=dict)  # torch threads each stage ran with (its numbers depend on it)

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

    def failure_note(self, name: str) -> Path:
        return self.out_dir / "stages" / f"{name}.failed"

    def run(self, stages: list[Stage], jobs: int = 1, launch: Launch | None = None) -> dict[str, Any]:
        """Run every unfinished stage; returns name -> result for all stages. `jobs` > 1 runs up
        to that many side by side, each through `launch`."""
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {duplicates}")
        if jobs < 1:
            raise ValueError(f"jobs must be 1 or more, got {jobs}")
        if jobs > 1:
            if launch is None:
                raise ValueError("running stages side by side needs a launch command")
            return self._run_side_by_side(stages, jobs, launch)
        start = time.perf_counter()
        # Actual / estimated time of the stages run so far corrects the estimates of the rest.
        spent = estimated = 0.0
        for k, stage in enumerate(stages, 1):
            if self.is_done(stage.name):
                self._reuse(stage, k, len(stages))
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

    def run_here(self, stage: Stage) -> None:
        """Run one stage in this process (a launched worker's part): its log, then its marker; on
        failure the one-line reason is left in `failure_note` for the runner that launched it."""
        note = self.failure_note(stage.name)
        note.unlink(missing_ok=True)
        try:
            self._run_one(stage, 1, 1, time.perf_counter(), stage.estimate_s, stage.estimate_s)
        except StageError as err:
            write_json(note, {"error": str(err)})
            raise

    def _run_side_by_side(self, stages: list[Stage], jobs: int, launch: Launch) -> dict[str, Any]:
        names = {s.name for s in stages}
        unknown = sorted({n for s in stages for n in s.needs} - names)
        if unknown:
            raise ValueError(f"stages need stages that are not in the plan: {unknown}")
        index = {s.name: k for k, s in enumerate(stages, 1)}
        finished: set[str] = set()
        pending: list[Stage] = []
        for stage in stages:
            if self.is_done(stage.name):
                self._reuse(stage, index[stage.name], len(stages))
                finished.add(stage.name)
            else:
                pending.append(stage)
        start = last_beat = time.perf_counter()
        running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
        failures: list[str] = []
        try:
            while running or (pending and not failures):
                if not failures:  # after a failure: let the running ones finish, start nothing new
                    ready = [s for s in pending if set(s.needs) <= finished]
                    if not ready and not running:
                        raise ValueError(f"no stage can start: {[s.name for s in pending]} wait on each other")
                    for stage in ready[:jobs - len(running)]:
                        running[stage.name] = self._launch(stage, launch, index[stage.name], len(stages), start, pending)
                        pending.remove(stage)
                time.sleep(POLL_S)
                for name, (proc, t0, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    if proc.returncode == 0 and self.is_done(name):
                        self._take_marker(name)
                        self._say(f"[{index[name]}/{len(stages)}] {name}: finished in {_fmt(time.perf_counter() - t0)}")
                        finished.add(name)
                    else:
                        failures.append(self._failure(name, proc.returncode))
                now = time.perf_counter()
                if self.heartbeat_s > 0 and running and now - last_beat >= self.heartbeat_s:
                    last_beat = now
                    busy = ", ".join(f"{n} {_fmt(now - t0)}" for n, (_, t0, _) in running.items())
                    self._say(f"running {busy} (elapsed {_fmt(now - start)}, {len(pending)} stages waiting)")
        except BaseException:
            for proc, _, log in running.values():  # an interrupt or a broken plan: stop the workers
                proc.terminate()
            for proc, _, log in running.values():
                proc.wait()
                log.close()
            raise
        if failures:
            raise StageError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        self._say(f"all {len(stages)} stages done (this run {_fmt(time.perf_counter() - start)})")
        return self.results

    def _launch(self, stage: Stage, launch: Launch, k: int, n: int, start: float,
                pending: list[Stage]) -> tuple[subprocess.Popen, float, Any]:
        log_path = self.log_path(stage.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.failure_note(stage.name).unlink(missing_ok=True)
        what = f" - {stage.description}" if stage.description else ""
        self._say(f"[{k}/{n}] {stage.name}{what} (started; "
                  f"elapsed {_fmt(time.perf_counter() - start)}, {len(pending) - 1} stages waiting)")
        log = open(log_path, "a")  # noqa: SIM115 - open while the worker runs; what it prints outside the stage lands here
        proc = subprocess.Popen(launch(stage.name), stdout=log, stderr=subprocess.STDOUT)
        return proc, time.perf_counter(), log

    def _failure(self, name: str, returncode: int) -> str:
        note = self.failure_note(name)
        if note.is_file():
            return json.loads(note.read_text())["error"]
        return f"stage {name!r} failed: its process exited with code {returncode} (log: {self.log_path(name)})"

    def _take_marker(self, name: str) -> float:
        """A finished stage's stored result and timings into this runner; returns its seconds."""
        stored = self.load(name)
        self.results[name] = stored.get("result")
        self.timings[name] = float(stored.get("seconds", 0.0))
        self.cpu_timings[name] = float(stored.get("cpu_seconds", 0.0))
        if "threads" in stored:  # markers written before it was recorded have none
            self.threads[name] = int(stored["threads"])
        return self.timings[name]

    def _reuse(self, stage: Stage, k: int, n: int) -> None:
        self._say(f"[{k}/{n}] {stage.name}: done earlier ({_fmt(self._take_marker(stage.name))}), reused")

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
                                             "cpu_seconds": round(cpu, 3), "threads": torch.get_num_threads(),
                                             "result": result})
        self.results[stage.name] = result
        self.timings[stage.name] = seconds
        self.cpu_timings[stage.name] = cpu
        self.threads[stage.name] = torch.get_num_threads()
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
