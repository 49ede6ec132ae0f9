"""How many passes over its training data each member saw (epochs), from the budgets alone.

The training stream is cut into windows of seq_len + 1 tokens (data.pipeline.WindowSource); a step consumes batch_size of them.
A grown or pruned member continues its source's data iterator (a progressive lineage: one iterator across its
stages), so it has seen its source's windows too; a member trained from scratch starts its own iterator. epochs = windows consumed / windows in the stream.
Repetition favours whichever arm sees more passes, so every report states it and reproductions refuse > 1 pass
unless asked (experiments/reproduce_paper.py --allow_repeats).
"""

from __future__ import annotations

from typing import Any, Sequence


def windows_per_epoch(n_train_tokens: int, seq_len: int) -> int:
    return max(1, (int(n_train_tokens) - 1) // int(seq_len))


def epochs_per_member(stages: Sequence[Any], mode: str, batch_size: int, n_train_tokens: int, seq_len: int,
                      windows_before: int = 0) -> list[float]:
    """Epochs of the training stream seen by the weights of each stage's member, in stage order: a grown or pruned
    member continues its source's data iterator, so it has seen its source's windows too (transition table); a
    stage without a recorded transition follows `mode` (progressive: the whole lineage before it; independent: its
    own). windows_before: what the parent of a grown or pruned run consumed of the same stream (its first stage
    continues that iterator)."""
    per_epoch = windows_per_epoch(n_train_tokens, seq_len)
    seen: dict[str, int] = {}
    out, previous = [], int(windows_before)
    for k, s in enumerate(stages):
        own = s.steps * batch_size
        row = getattr(s, "transition", None)
        if row is not None:
            before = seen.get(row.source, 0) if row.init != "scratch" else (int(windows_before) if k == 0 else 0)
        else:
            before = previous if mode == "progressive" else 0
        consumed = before + own
        seen[getattr(s, "name", str(k))] = consumed
        previous = consumed
        out.append(consumed / per_epoch)
    return out


def repeat_warning(names: Sequence[str], epochs: Sequence[float], n_train_tokens: int) -> str | None:
    """A one-line warning naming the members whose budget needs more than one pass, or None."""
    over = [f"{n}: {e:.2f}" for n, e in zip(names, epochs) if e > 1.0 + 1e-9]
    if not over:
        return None
    return (f"the budget repeats the training data ({n_train_tokens:,} tokens): epochs per member {', '.join(over)}; "
            "lower budget.largest_tokens / budget_scale or add training text (data.train_files)")
