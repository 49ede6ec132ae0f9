"""One stage's step loop: the train step, then the hooks due at each step boundary.

    state = run_stage(spec, state, train_step, data_iter, hooks)

A hook is an action at a step boundary with its own `every` (Levanter's `add_hook(fn, every=n)`; big_vision's
loop reads as such a list): the progress bar, profiling, the metrics log, held-out eval, in-loop benchmarks,
preemption and checkpoints are all hooks (`standard_hooks` builds them in that order), and goodput accounts each
one's time in its own bucket. The loop itself only steps, runs the hooks that are due, and stops after a
preemption checkpoint. `StageSpec` is the stage's plan as the loop needs it: sizes, steps, FLOPs and intervals,
never the run config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax

from jaxgrow import storage
from jaxgrow.model import losses
from jaxgrow.train import checkpoint, faults, logs
from jaxgrow.train.faults import Preempted, SignalFlag
from jaxgrow.train.goodput import Goodput
from jaxgrow.train.trainer import NonFiniteLoss, TrainState


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """Everything the loop and its hooks need to know about one stage."""

    index: int
    name: str
    model_cfg: Any
    steps: int                     # total steps of the stage
    tokens_per_step: int
    train_flops_per_step: float    # analytic (flops.py), student only
    teacher_flops_per_step: float  # forward of the distillation teacher while it is active
    teacher_active_steps: int
    flops_offset: float            # family FLOPs spent before this stage
    meta: checkpoint.Meta          # written into every checkpoint (stage info; data state added at save)
    step_offset: int = 0           # steps of the stages before this one (family-wide step for TensorBoard)
    log_every: int = 10            # metrics.jsonl / TensorBoard interval (the only regular host sync)
    eval_every: int = 50           # held-out eval interval
    checkpoint_every: int = 100    # stage checkpoint interval
    skip_nonfinite: int = 0        # non-finite steps tolerated (their updates are skipped)
    profile: tuple[int, int] | None = None  # steps [a, b) traced with jax.profiler
    progress: bool = False         # tqdm progress bar

    def flops_at(self, step: int) -> float:
        """Cumulative family FLOPs after `step` steps of this stage."""
        return (self.flops_offset + step * self.train_flops_per_step
                + min(step, self.teacher_active_steps) * self.teacher_flops_per_step)

    @property
    def record_base(self) -> dict:
        return {"stage": self.index, "member": self.name, "step_offset": self.step_offset}


class Loop:
    """The running stage: what the hooks read (state, last metrics, data position) and change (stop)."""

    def __init__(self, spec: StageSpec, state: TrainState, train_step: Callable, data_iter: Any, goodput: Goodput,
                 teacher_params: Any = None):
        self.spec, self.state, self.train_step, self.data_iter = spec, state, train_step, data_iter
        self.goodput = goodput
        self.extra = (teacher_params,) if teacher_params is not None else ()
        self.start = int(jax.device_get(state.step))
        self.metrics: Any = None  # device metrics of the last step (read at log intervals only)
        self.stop = False         # a preemption asked for a checkpoint and an exit at this boundary
        self.stop_signum: int = signal.SIGTERM  # what the exit code reports (jax's preemption sync: SIGTERM)
        self.window = (time.perf_counter(), self.start)  # the tokens/s window: (time, step) it started at

    def train_one(self, step: int) -> None:
        with self.goodput.measure("data"):
            batch = next(self.data_iter)
        if step == self.start:  # the first call traces and compiles
            with self.goodput.measure("compile"):
                self.state, self.metrics = jax.block_until_ready(self.train_step(self.state, batch, *self.extra))
        else:
            self.state, self.metrics = self.train_step(self.state, batch, *self.extra)
        faults.point("train_step")

    def check_finite(self, done: int, where: str) -> None:
        bad = int(jax.device_get(self.state.nonfinite))
        if bad > self.spec.skip_nonfinite:
            raise NonFiniteLoss(f"non-finite loss or gradients at or before step {done} of stage {self.spec.index} "
                                f"({self.spec.name}): {bad} bad step(s) > skip_nonfinite_steps={self.spec.skip_nonfinite}; "
                                f"the last good checkpoint is kept in {where}")

    def restart_window(self, done: int | None = None) -> None:
        self.window = (time.perf_counter(), self.window[1] if done is None else done)


@dataclasses.dataclass
class Hook:
    """An action after step `done` when done % every == 0 (every <= 0: never by the interval), after the stage's
    last step (at_end), or when `when(loop, done)` holds; `finish(loop)` runs once when the stage ends or stops."""

    name: str
    fn: Callable[[Loop, int], Any]
    every: int = 1
    at_end: bool = True
    bucket: str | None = None        # goodput bucket of its time (None: it counts as train time)
    sync: bool = False               # wait for the outstanding steps first, so their time is not its
    pauses_throughput: bool = False  # restart the tokens/s window after it (its time is not the steps')
    at_start: bool = False           # also at the boundary before the first step
    when: Callable[[Loop, int], bool] | None = None
    finish: Callable[[Loop], None] | None = None

    def due(self, loop: Loop, done: int) -> bool:
        return ((self.every > 0 and done % self.every == 0) or (self.at_end and done == loop.spec.steps)
                or (self.when is not None and self.when(loop, done)))

    def run(self, loop: Loop, done: int) -> None:
        if self.sync:
            jax.block_until_ready(loop.state)
        if self.bucket is None:
            self.fn(loop, done)
        else:
            with loop.goodput.measure(self.bucket):
                self.fn(loop, done)
        if self.pauses_throughput:
            loop.restart_window()


def run_stage(spec: StageSpec, state: TrainState, train_step: Callable, data_iter: Any, hooks: list[Hook], *,
              teacher_params: Any = None, goodput: Goodput | None = None) -> TrainState:
    """Trains `state` from its step to spec.steps, running the due hooks after every step.

    Host syncs happen only in hooks (log, eval, checkpoint intervals). Raises Preempted after the hooks of a boundary
    at which one asked to stop (the checkpoint hook saved first), NonFiniteLoss when a hook finds too many
    non-finite steps."""
    loop = Loop(spec, state, train_step, data_iter, goodput if goodput is not None else Goodput(), teacher_params)
    # the graceful window: a SIGTERM/SIGINT during the steps becomes a checkpoint at the next boundary; outside it
    # (setup, expansion, member save, report) a signal ends the process at once (faults.py)
    signals = next((h.signals for h in hooks if getattr(h, "signals", None) is not None), None)
    with signals.window() if signals is not None else contextlib.nullcontext():
        for hook in hooks:
            if hook.at_start:
                hook.run(loop, loop.start)
        for step in range(loop.start, spec.steps):
            t_iter, measured = time.perf_counter(), sum(loop.goodput.seconds.values())
            loop.train_one(step)
            for hook in hooks:
                if hook.due(loop, step + 1):
                    hook.run(loop, step + 1)
            loop.goodput.add("train", time.perf_counter() - t_iter - (sum(loop.goodput.seconds.values()) - measured))
            if loop.stop:
                _finish(hooks, loop)
                raise Preempted(loop.stop_signum)
        _finish(hooks, loop)
    return loop.state


def _finish(hooks: list[Hook], loop: Loop) -> None:
    for hook in hooks:
        if hook.finish is not None:
            hook.finish(loop)


# ----------------------------------------------------------------------------------------------
# The standard hooks


def progress_hook(spec: StageSpec, start: int) -> Hook:
    """A tqdm bar (process 0, when asked) updated every step; the log hook sets its loss/lr postfix."""
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=spec.steps, initial=start, desc=f"stage {spec.index} {spec.name}", unit="step",
               disable=not (spec.progress and jax.process_index() == 0), dynamic_ncols=True)
    hook = Hook("progress", lambda loop, done: bar.update(1), finish=lambda loop: bar.close())
    hook.bar = bar  # type: ignore[attr-defined]
    return hook


def profile_hook(spec: StageSpec, workdir: Path) -> Hook:
    """jax.profiler trace of steps [a, b) into W/profile/<k>-<name> (a remote workdir gets it uploaded at the end)."""
    a, b = spec.profile
    profile_dir = storage.join(workdir, "profile", f"{spec.index}-{spec.name}")
    # the profiler writes local files: a remote workdir gets the trace uploaded when it stops
    trace_dir = tempfile.mkdtemp(prefix="jaxgrow-profile-") if storage.is_remote(workdir) else str(profile_dir)

    tracing = []

    def fn(loop: Loop, done: int) -> None:
        if done == a:
            jax.profiler.start_trace(trace_dir)
            tracing.append(True)
        elif done == b and tracing:  # (a run resumed inside [a, b) never started this stage's trace)
            jax.block_until_ready(loop.state)
            jax.profiler.stop_trace()
            if trace_dir != str(profile_dir):
                storage.upload_tree(trace_dir, profile_dir)
                shutil.rmtree(trace_dir, ignore_errors=True)

    return Hook("profile", fn, every=1, at_end=False, at_start=True)


def log_hook(spec: StageSpec, metrics_log: logs.MetricsLog, where: str, bar: Any = None) -> Hook:
    """Every spec.log_every steps: loss, LR, grad norm, tokens/s, cumulative FLOPs (and the distillation KL) to
    metrics.jsonl and TensorBoard, after checking that the non-finite steps are within the tolerance."""

    def fn(loop: Loop, done: int) -> None:
        m = jax.device_get(loop.metrics)
        loop.check_finite(done, where)
        now = time.perf_counter()
        t0, s0 = loop.window
        tps = (done - s0) * spec.tokens_per_step / max(now - t0, 1e-9)
        loop.window = (now, done)
        record = dict(spec.record_base, step=done, loss=float(m["loss"]), lr=float(m["lr"]),
                      grad_norm=float(m["grad_norm"]), tokens_per_sec=tps, train_flops=spec.flops_at(done))
        if loop.extra:
            record.update(distill_kl=float(m["distill_kl"]), distill_weight=float(m["distill_weight"]))
        record.update(getattr(loop.data_iter, "log_fields", dict)())  # tokens per mixture source
        if int(m["nonfinite_steps"]):
            record["nonfinite_steps"] = int(m["nonfinite_steps"])
        metrics_log.write(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")

    return Hook("log", fn, every=spec.log_every)


def eval_hook(spec: StageSpec, eval_step: Callable, eval_batches: list, metrics_log: logs.MetricsLog) -> Hook:
    """Every spec.eval_every steps: the held-out loss on the fixed eval batches."""

    def fn(loop: Loop, done: int) -> None:
        loss = losses.evaluate_loss(eval_step, loop.state.params, eval_batches)
        metrics_log.write(dict(spec.record_base, step=done, eval_loss=loss, eval_ppl=math.exp(min(loss, 50.0)),
                               train_flops=spec.flops_at(done)))

    return Hook("eval", fn, every=spec.eval_every, bucket="eval", sync=True, pauses_throughput=True)


def preemption_hook(signals: SignalFlag, ckpts: checkpoint.Checkpoints) -> Hook:
    """Every step: SIGTERM/SIGINT (or, with several processes, jax's preemption sync) asks for a checkpoint at this
    boundary and an exit; the checkpoint hook after it saves. And a failed background save stops the run here, on
    every process (checkpoint.SaveFailed): a local read each step in a single process; with several, the processes
    combine their flags with one small all-gather at log boundaries (where the log hook already syncs the host), and
    every checkpoint boundary agrees before it waits (Checkpoints.save)."""
    multi_host = jax.process_count() > 1

    def fn(loop: Loop, done: int) -> None:
        every = loop.spec.log_every
        ckpts.check_saves(agree=multi_host and every > 0 and done % every == 0)
        if signals.signum is not None or (multi_host and ckpts.reached_preemption(done)):
            loop.stop = True
            loop.stop_signum = signals.signum or signal.SIGTERM
            signals.stopping()  # the watchdog's first deadline is met: the preemption checkpoint comes next

    hook = Hook("preemption", fn, every=1)
    hook.signals = signals  # type: ignore[attr-defined]  (run_stage opens its graceful window)
    return hook


def checkpoint_hook(spec: StageSpec, ckpts: checkpoint.Checkpoints) -> Hook:
    """Every spec.checkpoint_every steps, at the end, and when a preemption asked: the stage state with the data
    iterator's position (async saves go on in the background; the stage's end waits for them)."""

    def fn(loop: Loop, done: int) -> None:
        loop.check_finite(done, str(ckpts.directory))
        jax.block_until_ready(loop.state)
        with loop.goodput.measure("checkpoint"):
            ckpts.save(done, loop.state.params, loop.state.opt_state, spec.meta.replace(
                data_state=loop.data_iter.state(), nonfinite=int(jax.device_get(loop.state.nonfinite))))
            faults.point("checkpoint_saving")

    def finish(loop: Loop) -> None:
        with loop.goodput.measure("checkpoint"):
            ckpts.wait()

    return Hook("checkpoint", fn, every=spec.checkpoint_every, pauses_throughput=True,
                when=lambda loop, done: loop.stop, finish=finish)


def standard_hooks(spec: StageSpec, *, eval_step: Callable, eval_batches: list, ckpts: checkpoint.Checkpoints,
                   metrics_log: logs.MetricsLog, signals: SignalFlag, workdir: Path, start: int,
                   extra: tuple[Hook, ...] = ()) -> list[Hook]:
    """progress, profile (when asked), log, eval, `extra` (e.g. in-loop benchmarks), preemption, checkpoint: in
    this order at every boundary."""
    progress = progress_hook(spec, start)
    hooks = [progress]
    if spec.profile:
        hooks.append(profile_hook(spec, workdir))
    hooks += [log_hook(spec, metrics_log, str(ckpts.directory), progress.bar),
              eval_hook(spec, eval_step, eval_batches, metrics_log), *extra,
              preemption_hook(signals, ckpts), checkpoint_hook(spec, ckpts)]
    return hooks
