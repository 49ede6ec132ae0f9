"""Faults: injection for the reliability tests, and preemption handling (SignalFlag, Preempted).

Fault injection: die (or get SIGTERM) at a named point of a run.

    JAXGROW_FAULT="<point>:<n>[:TERM|:INT]"   the n-th time this process reaches <point>, send
                                              itself SIGKILL (default), SIGTERM or SIGINT (Ctrl-C).

Points: train_step (after a step's update), checkpoint_saving (a stage checkpoint write started,
async: not yet committed), member_saving (a member checkpoint write started), expanding (inside an
expansion, between the params and the optimizer state), tokenize_unit (a tokenize unit's shards written, its record
not yet: `tokenize` and the in-run tokenization of raw text), expand_saving (`expand` wrote its lineage record and
config, not yet the grown checkpoint), export_writing (`export` wrote one member, not yet the next), report_writing
(the family's members are evaluated, report.json not yet written). Unset in normal runs: then `point()` is an
environment lookup and nothing else.
"""

from __future__ import annotations

import logging
import signal
import threading

from jaxgrow import storage


log = logging.getLogger("jaxgrow")




point = storage.fault_point  # the one implementation (storage.py), so the data wing can mark points too


# ----------------------------------------------------------------------------------------------
# Preemption: SIGTERM / Ctrl-C become a checkpoint at the next step boundary, then a clean exit.


class Preempted(Exception):
    """Raised after a preemption checkpoint has been written; the run exits cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalFlag:
    """SIGTERM/SIGINT set a flag that the loop checks at each step boundary (no host sync).

    A second SIGINT interrupts immediately (the default behaviour). With several processes SIGTERM
    is left to jax's preemption sync service (run_stage asks orbax's `reached_preemption`), so that
    every host saves at the same step.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        import jax  # noqa: PLC0415

        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the next step boundary", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
