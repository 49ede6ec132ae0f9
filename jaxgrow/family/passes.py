"""How many passes over its training data each member saw (epochs), from the budgets alone.

The training stream is cut into windows of seq_len + 1 tokens (data.pipeline.WindowSource); a step consumes batch_size of them.
A progressive lineage continues one data iterator across its stages, so member k has seen the windows of stages
0..k; an independent member starts its own iterator. epochs = windows consumed / windows in the stream.
Repetition favours whichever arm sees more passes, so every report states it and reproductions refuse > 1 pass
unless asked (experiments/reproduce_paper.py --allow_repeats).
"""

from __future__ import annotations

from typing import Any, Sequence


def windows_per_epoch(n_train_tokens: int, seq_len: int) -> int:
    return max(1, (int(n_train_tokens) - 1) // int(seq_len))


def epochs_per_member(stages: Sequence[Any], mode: str, batch_size: int, n_train_tokens: int, seq_len: int,
                      windows_before: int = 0) -> list[float]:
    """Epochs of the training stream seen by the weights of each member (cumulative over a progressive lineage;
    windows_before: what the parent of a grown run consumed of the same stream)."""
    per_epoch = windows_per_epoch(n_train_tokens, seq_len)
    out, consumed = [], int(windows_before)
    for s in stages:
        consumed = consumed + s.steps * batch_size if mode == "progressive" else s.steps * batch_size
        out.append(consumed / per_epoch)
    return out


def repeat_warning(names: Sequence[str], epochs: Sequence[float], n_train_tokens: int) -> str | None:
    """A one-line warning naming the members whose budget needs more than one pass, or None."""
    over = [f"{n}: {e:.2f}" for n, e in zip(names, epochs) if e > 1.0 + 1e-9]
    if not over:
        return None
    return (f"the budget repeats the training data ({n_train_tokens:,} tokens): epochs per member {', '.join(over)}; "
            "lower budget.largest_tokens / budget_scale or add training text (data.train_files)")
