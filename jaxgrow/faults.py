"""Fault injection for the reliability tests: die (or get SIGTERM) at a named point of a run.

    JAXGROW_FAULT="<point>:<n>[:TERM|:INT]"   the n-th time this process reaches <point>, send
                                              itself SIGKILL (default), SIGTERM or SIGINT (Ctrl-C).

Points: train_step (after a step's update), checkpoint_saving (a stage checkpoint write started,
async: not yet committed), member_saving (a member checkpoint write started), expanding (inside an
expansion, between the params and the optimizer state). Unset in normal runs: then `point()` is a
dictionary lookup and nothing else.
"""

from __future__ import annotations

import collections
import os
import signal

_counts: collections.Counter = collections.Counter()


def point(name: str) -> None:
    spec = os.environ.get("JAXGROW_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _counts[name] += 1
    if _counts[name] == int(parts[1]):
        sig = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}.get(parts[2] if len(parts) > 2 else "", signal.SIGKILL)
        os.kill(os.getpid(), sig)
