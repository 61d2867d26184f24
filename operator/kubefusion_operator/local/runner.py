"""Execute a FusionRun's local plan: stage processes, model servers, resume, summaries.

Every step is `python -m kubefusion_operator stage ...` with the run config written to a file, as in the
operator's pods. A step whose completion record exists is skipped, so running the same command again
after Ctrl-C or a kill resumes where it stopped; the stages resume their own partial work.
Children die with the runner (PR_SET_PDEATHSIG), and a lock they inherit keeps a second runner off the
run folder until every process of the first is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from kubefusion_operator.api import FusionRun, FusionRunSpec
from kubefusion_operator.local.plan import Step, local_steps
from kubefusion_operator.local.servers import ModelServer, ServerError, die_with_parent, start_server
from kubefusion_operator.planner import evaluation_candidates
from kubefusion_trainer.atomic import atomic_write_text
from kubefusion_trainer.layout import TARGET_MODEL_NAME, RunLayout, candidate_endpoint


class RunFailed(RuntimeError):
    """A step failed; the message names it and points at its log."""


class RunLocked(RuntimeError):
    """Another `kubefusion run` is working on the same run folder."""


def _is_local_path(value: str) -> bool:
    return not any(value.startswith(p) for p in ("hf://", "s3://", "gs://", "http://", "https://"))


def resolve_local_paths(spec: FusionRunSpec, workdir: Path) -> FusionRunSpec:
    """Make relative model and dataset paths that exist under `workdir` absolute.

    Stages may run with another working directory, and transformers serve needs the model name in
    requests to equal the served path: one absolute string serves both.
    """

    def fix(value: str) -> str:
        if _is_local_path(value) and not Path(value).is_absolute():
            candidate = (workdir / value.removeprefix("file://")).resolve()
            if candidate.exists():
                return str(candidate)
        return value

    data = spec.model_dump(by_alias=False)
    data["target"]["model"] = fix(data["target"]["model"])
    for source in data["sources"]:
        source["model"] = fix(source["model"])
    for dataset in data["datasets"]:
        dataset["location"] = fix(dataset["location"])
    data["scoring"]["reward_model"]["model"] = fix(data["scoring"]["reward_model"]["model"])
    return FusionRunSpec.model_validate(data)


def storage_root(run: FusionRun, workdir: Path) -> Path:
    """spec.storage.uri when it is a local folder, else runs/<name>, relative to workdir."""
    uri = run.spec.storage.uri
    if uri and "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"spec.storage.uri: {uri!r} is not a local folder; `kubefusion run` writes locally")
    path = Path(uri.removeprefix("file://")) if uri else Path("runs") / run.name
    return path if path.is_absolute() else (workdir / path).resolve()


def child_env() -> dict[str, str]:
    """This process's environment with this checkout's packages first on PYTHONPATH."""
    import kubefusion_operator
    import kubefusion_trainer

    env = dict(os.environ)
    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (kubefusion_operator, kubefusion_trainer)]
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# Settings and bookkeeping in completion records, not results (the runner prints the time itself).
_UNSUMMARIZED = {
    "stage",
    "name",
    "seed",
    "seconds",
    "world_size",
    "deepspeed_zero_stage",
    "shard",
    "shards",
    "gradient_accumulation_steps",
    "global_batch_size",
    "max_steps",
    "shards_scored",
}


def summarize_record(record: dict[str, Any]) -> str:
    """A short `key=value` summary of a completion record's counts: numbers, summed by key over nested
    per-dataset / per-source dicts (paths, names and flags left out)."""
    totals: dict[str, float] = {}

    def walk(value: Any, key: str, depth: int) -> None:
        if isinstance(value, bool) or key in _UNSUMMARIZED:
            return
        if isinstance(value, int | float):
            totals[key] = totals.get(key, 0) + value
        elif isinstance(value, dict) and depth < 3:
            for inner_key, inner in value.items():
                walk(inner, inner_key if isinstance(inner, int | float) else key, depth + 1)

    for key, value in record.items():
        walk(value, key, 0)
    shown = [(k, v) for k, v in totals.items() if v][:8]  # zero counts say nothing
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


@dataclass
class StepOutcome:
    step: Step
    skipped: bool
    seconds: float
    summary: str


class LocalRunner:
    """Runs the plan. `out` receives the human-readable lines (stdout by default)."""

    def __init__(
        self,
        run: FusionRun,
        workdir: Path,
        concurrency: int = 64,
        device: str = "cpu",
        out: Callable[[str], None] = print,
        server_deadline_s: float = 300.0,
        show_progress: bool | None = None,
    ) -> None:
        self.run = run
        self.workdir = workdir.resolve()
        self.spec = resolve_local_paths(run.spec, self.workdir)
        self.layout = RunLayout(storage_root(run, self.workdir))
        self.steps = local_steps(self.spec, concurrency=concurrency, device=device)
        self.out = out
        self.server_deadline_s = server_deadline_s
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self.env = child_env()
        self._child: subprocess.Popen[bytes] | None = None
        self._servers: list[ModelServer] = []
        self._lock_fd: int | None = None

    # --- files ---

    def write_config(self, label: str, endpoints: dict[str, str] | None = None) -> Path:
        config = self.spec.to_run_config(self.run.name, str(self.layout.root), endpoints)
        path = self.layout.run_config_file(label)
        atomic_write_text(
            path, yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
        )
        return path

    def save_fusionrun(self) -> Path:
        """The FusionRun (paths resolved) beside the outputs, for `kubefusion status`."""
        from kubefusion_operator.api import as_dict

        data = as_dict(self.run.model_copy(update={"spec": self.spec, "status": None}))
        path = self.layout.run_config_file("fusionrun")
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        return path

    @contextlib.contextmanager
    def lock(self, wait_s: float = 60.0) -> Iterator[None]:
        """Hold state/.runner.lock for the run. Children inherit it, so after a kill the lock is free only
        once the old stage and server processes are gone too; a new runner waits up to `wait_s` for that."""
        path = self.layout.root / "state" / ".runner.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RunLocked(
                            f"{self.layout.root}: another `kubefusion run` (or its stage processes) is working "
                            "on this run"
                        ) from None
                    time.sleep(0.5)
            self._lock_fd = handle.fileno()
            try:
                yield
            finally:
                self._lock_fd = None

    # --- execution ---

    def execute(self) -> list[StepOutcome]:
        """Run every unfinished step in order; raise RunFailed at the first failure."""
        outcomes = []
        with self.lock(), self._signals():
            self.save_fusionrun()
            self.out(f"run {self.run.name}: {len(self.steps)} steps, outputs in {self.layout.root}")
            for number, step in enumerate(self.steps, 1):
                outcomes.append(self._execute_step(step, number))
        return outcomes

    def _execute_step(self, step: Step, number: int) -> StepOutcome:
        prefix = f"[{number}/{len(self.steps)}] {step.name}"
        if step.done(self.layout):
            summary = self._record_summary(step)
            self.out(f"{prefix}: done earlier{(' - ' + summary) if summary else ''}")
            return StepOutcome(step, True, 0.0, summary)
        started = time.monotonic()
        self.out(f"{prefix}: running")
        endpoints: dict[str, str] = {}
        try:
            for name in (*([step.serve] if step.serve else []), *step.also_serve):
                try:
                    server = self._start_server(name)
                except ServerError as exc:
                    raise RunFailed(f"{step.name}: {exc}") from None
                self._servers.append(server)
                endpoints[name] = server.base_url
            config = self.write_config(
                step.args[0] if not step.serve else f"{step.args[0]}-{step.serve}", endpoints
            )
            self._run_child(step, config)
        finally:
            self._stop_servers()  # as soon as the step that needed them is done
        if not step.done(self.layout):
            raise RunFailed(f"{step.name}: the stage exited 0 but wrote none of {', '.join(step.records)}")
        seconds = time.monotonic() - started
        summary = self._record_summary(step)
        self.out(f"{prefix}: done in {seconds:.0f}s{(' - ' + summary) if summary else ''}")
        return StepOutcome(step, False, seconds, summary)

    def _stop_servers(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def _start_server(self, name: str) -> ModelServer:
        candidates = {candidate_endpoint(c): m for c, m in evaluation_candidates(self.spec).items()}
        if name == TARGET_MODEL_NAME:
            model, gpus = str(self.layout.final_model("sft")), 0
        elif name in candidates:
            model, gpus = candidates[name], self.spec.target.serving.gpus
            if model.startswith("train/"):
                model = str(self.layout.root / model)
        else:
            source = next(s for s in self.spec.sources if s.name == name)
            model, gpus = source.model, source.serving.gpus
        self.out(f"  serving {name} ({model})")
        return start_server(
            name,
            model,
            self.layout.logs_dir,
            gpus=gpus,
            deadline_s=self.server_deadline_s,
            env=self.env,
            pass_fds=self._inherited_fds(),
        )

    def _inherited_fds(self) -> tuple[int, ...]:
        return () if self._lock_fd is None else (self._lock_fd,)

    def _run_child(self, step: Step, config: Path) -> None:
        log_path = self.layout.logs_dir / f"{step.name.replace(' ', '-')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = step.command(sys.executable, str(config))
        # With a terminal the stage's own progress bar shows; otherwise its output goes to the log.
        with open(log_path, "ab") as log:
            sink: IO[bytes] | None = None if self.show_progress else log
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self._child = subprocess.Popen(
                command,
                stdout=sink,
                stderr=sink,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.workdir,
                preexec_fn=die_with_parent,
                pass_fds=self._inherited_fds(),
            )
            try:
                code = self._child.wait()
            finally:
                self._child = None
        if code != 0:
            tail = "" if self.show_progress else _tail(log_path)
            raise RunFailed(f"{step.name}: `{' '.join(step.args)}` exited {code}; log: {log_path}{tail}")

    def _record_summary(self, step: Step) -> str:
        for name in step.records:
            path = self.layout.stage_record(name)
            if path.exists():
                try:
                    return summarize_record(json.loads(path.read_text(encoding="utf-8")))
                except (ValueError, OSError):
                    return ""
        return ""

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT leave with KeyboardInterrupt; the child and the server are stopped on the way out.

        The handler only raises: it may interrupt Popen.wait, which holds a lock that waiting again
        from inside the handler would deadlock on.
        """

        def handle(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            # A second signal during clean-up must not cut it short.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            try:
                self.stop_children()
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)

    def stop_children(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._stop_servers()


def _tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")[-chars:]
    return f"\n--- last lines of {path} ---\n{text}"
