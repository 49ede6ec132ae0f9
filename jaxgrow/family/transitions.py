"""The transition table: how each stage of a family starts and what it minimises (DESIGN.md §13).

A stage is one row `(init, loss)`:
    init    scratch            a fresh initialisation
            grow(M)            member M's final state grown into this member (jaxgrow.expand)
            prune(M)           member M's final state pruned down to this member (jaxgrow.prune)
    loss    ce                 next-token cross-entropy
            ce + distil(T)     plus KL(p_T || p_this) to a frozen teacher T: an earlier member, or a checkpoint path

The presets that fill it (`config.mode`):
    progressive   scratch, grow(prev), grow(prev), ...   (the paper; + distil(prev) with a decaying weight when
                  consistency.weight > 0)
    independent   scratch for every member
    pruned        the largest member from scratch first, then every smaller member, largest first, pruned from it
                  and distilled from it (Minitron's recipe)
or `config.transitions` spells the table out, one row per member in training order:

    "small=scratch; medium=grow(small); large=grow(medium); small_rd=grow(small)+distil(large)"

Pure: no jax, no files. `check` refuses cycles, a member used before its stage, a missing or repeated member, a
growing prune or a shrinking growth (naming the row).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from jaxgrow import config as config_lib


INITS = ("scratch", "grow", "prune")
MODES = ("progressive", "independent", "pruned")


@dataclasses.dataclass(frozen=True)
class Transition:
    """One stage: train `member`, starting from `init` (of `source`), with an optional distillation teacher."""

    member: str
    init: str = "scratch"          # scratch | grow | prune
    source: str | None = None      # the member whose final state `init` reads (grow, prune)
    teacher: str | None = None     # distillation teacher: a member of an earlier stage or a checkpoint path
    weight: float = 0.0            # the KL term's weight (0: cross-entropy only)
    decay_fraction: float = 0.0    # 0: constant weight; else it decays linearly to 0 over this fraction of the stage

    @property
    def distils(self) -> bool:
        return self.teacher is not None and self.weight > 0

    def describe(self) -> str:
        init = "scratch" if self.init == "scratch" else f"{self.init} from {self.source}"
        if not self.distils:
            return f"{init}; ce"
        decay = f", weight {self.weight:g} decaying over {self.decay_fraction:g} of the stage" if self.decay_fraction \
            else f", weight {self.weight:g}"
        return f"{init}; ce + distil from {self.teacher}{decay}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def teacher_is_path(teacher: str) -> bool:
    """A teacher that names a checkpoint directory rather than a member (member names never hold '/' or ':')."""
    return "/" in teacher or ":" in teacher or teacher.startswith(".")


# ----------------------------------------------------------------------------------------------
# Presets and the spelled-out table


def preset(mode: str, names: Sequence[str], sizes: Sequence[int], cfg: Any) -> list[Transition]:
    """The table of `mode` for members `names` (family order) with non-embedding sizes `sizes`."""
    if mode == "independent":
        return [Transition(n) for n in names]
    if mode == "progressive":
        c = cfg.consistency
        rows = [Transition(names[0])]
        for prev, name in zip(names, names[1:]):
            teacher = prev if c.weight > 0 else None
            rows.append(Transition(name, "grow", prev, teacher, float(c.weight) if teacher else 0.0,
                                   float(c.fraction) if teacher else 0.0))
        return rows
    if mode == "pruned":
        largest = max(range(len(names)), key=lambda i: (sizes[i], i))
        rest = sorted((i for i in range(len(names)) if i != largest), key=lambda i: (-sizes[i], -i))
        d = cfg.distill
        return [Transition(names[largest])] + [
            Transition(names[i], "prune", names[largest], names[largest], float(d.weight)) for i in rest]
    raise config_lib.ConfigError(f"mode={mode!r} must be one of {list(MODES)}")


_ROW = re.compile(r"^\s*(?P<member>[A-Za-z0-9][A-Za-z0-9_-]*)\s*=\s*(?P<init>scratch|grow\(\s*(?P<grow>[^)]*?)\s*\)"
                  r"|prune\(\s*(?P<prune>[^)]*?)\s*\))\s*(?:\+\s*distil\(\s*(?P<teacher>[^)]*?)\s*\))?\s*$")


def parse(text: str, distill_weight: float) -> list[Transition]:
    """`config.transitions`: rows `member=scratch|grow(M)|prune(M)[+distil(T)]` separated by ';'."""
    rows = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        m = _ROW.match(part)
        if not m:
            raise config_lib.ConfigError(
                f"transitions: row {i + 1} {part.strip()!r} is not 'member=scratch', 'member=grow(M)' or "
                "'member=prune(M)', optionally followed by '+distil(T)' (T a member or a checkpoint path)")
        init = "scratch" if m["init"] == "scratch" else ("grow" if m["grow"] is not None else "prune")
        source = m["grow"] if init == "grow" else m["prune"]
        teacher = m["teacher"] or None
        rows.append(Transition(m["member"], init, source or None, teacher, float(distill_weight) if teacher else 0.0))
    if not rows:
        raise config_lib.ConfigError("transitions: the table is empty; give one row per member or set it to '' "
                                     "(the preset of `mode`)")
    return rows


def with_default_teacher(rows: list[Transition], teacher: str, weight: float) -> list[Transition]:
    """config.distill.teacher set: every row without a teacher distils from it (a member: only the rows after its
    stage; a checkpoint path: every row)."""
    if not teacher:
        return rows
    names = [r.member for r in rows]
    if not teacher_is_path(teacher):
        if teacher not in names:
            raise config_lib.ConfigError(f"distill.teacher={teacher!r} is not a member (members: {names}) nor a "
                                         "checkpoint path")
        if teacher == names[-1]:
            raise config_lib.ConfigError(f"distill.teacher={teacher!r} is trained last: no stage comes after it to "
                                         "distil from it (a teacher must be trained before its students)")
    seen, out = set(), []
    for row in rows:
        ok = teacher_is_path(teacher) or teacher in seen
        if row.teacher is None and ok and row.member != teacher:
            row = dataclasses.replace(row, teacher=teacher, weight=float(weight), decay_fraction=0.0)
        out.append(row)
        seen.add(row.member)
    return out


def table(cfg: Any, names: Sequence[str], sizes: Sequence[int], parent_teacher: str | None = None) -> list[Transition]:
    """The run's table: config.transitions when spelled out, else the preset of config.mode; then
    config.distill.teacher fills the rows without a teacher (a run made by `prune`: its first row distils from the
    parent checkpoint, `parent_teacher`, unless distill.teacher names another); checked."""
    text = cfg.get("transitions", "")
    d = cfg.distill
    rows = parse(text, d.weight) if text.strip() else preset(cfg.mode, names, sizes, cfg)
    rows = with_default_teacher(rows, d.teacher, d.weight)
    if parent_teacher and not d.teacher and rows[0].teacher is None:
        rows[0] = dataclasses.replace(rows[0], teacher=parent_teacher, weight=float(d.weight))
    if d.weight == 0:  # distill.weight=0 turns distillation off everywhere (consistency has its own weight)
        rows = [r if r.decay_fraction else dataclasses.replace(r, teacher=None, weight=0.0) for r in rows]
    check(rows, names, sizes)
    return rows


def check(rows: Sequence[Transition], names: Sequence[str], sizes: Sequence[int]) -> None:
    """Every member exactly once; a source or teacher member trained in an earlier stage (no cycles, nothing used
    before it exists); grow never shrinks and prune never grows (non-embedding size; each size key is checked by
    the expansion and pruning libraries)."""
    size = dict(zip(names, sizes))
    seen: list[str] = []
    for k, row in enumerate(rows):
        where = f"transitions: row {k + 1} ({row.member})"
        if row.member not in size:
            raise config_lib.ConfigError(f"{where}: {row.member!r} is not a member; members: {list(names)}")
        if row.member in seen:
            raise config_lib.ConfigError(f"{where}: member {row.member!r} is trained twice; each member has one row "
                                         "(declare another member, e.g. with add_member, to train it again)")
        if row.init not in INITS:
            raise config_lib.ConfigError(f"{where}: init {row.init!r} must be one of {list(INITS)}")
        for role, other in (("source", row.source), ("teacher", row.teacher)):
            if other is None or (role == "teacher" and teacher_is_path(other)):
                continue
            if other == row.member:
                raise config_lib.ConfigError(f"{where}: its {role} is the member itself (a cycle)")
            if other not in size:
                raise config_lib.ConfigError(f"{where}: {role} {other!r} is not a member; members: {list(names)}")
            if other not in seen:
                raise config_lib.ConfigError(f"{where}: {role} {other!r} is used before it exists (its stage comes "
                                             "later in the table); order the rows so it is trained first")
        if row.init != "scratch" and row.source is None:
            raise config_lib.ConfigError(f"{where}: {row.init} needs a source member, e.g. {row.init}(M)")
        seen.append(row.member)
    missing = [n for n in names if n not in seen]
    if missing:
        raise config_lib.ConfigError(f"transitions: members {missing} have no row; every member needs one")


def order(rows: Sequence[Transition]) -> list[str]:
    """Members in training (stage) order."""
    return [r.member for r in rows]
