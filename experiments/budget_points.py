"""One table of the paper's claims at several budget points (tokens per parameter), from reproduce_paper.py runs.

    python experiments/budget_points.py --point 1x=W1/comparison.json --point 4x=W4/comparison.json \
        [--out experiments/results/cpu/budget_points]

Per point: tokens per parameter (the largest member trained alone: its tokens / its non-embedding parameters),
the passes over the data of the largest progressive and independent member, the FLOPs saved, and each claim's
paired difference with its 95% interval and verdict: the worst grown member's relative loss against its
independent twin (comparable_quality_at_lower_compute), the size-adjusted progressive family against the
independent one (adjusted_lr_beats_independent), and the adjacent KL raw and at equal quality gap
(lower_adjacent_kl, lower_adjacent_kl_at_equal_gap). Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CLAIMS = (("comparable_quality_at_lower_compute", "worst grown member vs its independent twin (relative)"),
          ("adjusted_lr_beats_independent", "mean loss, progressive (adjusted LR) - independent (nats)"),
          ("adjusted_beats_fixed", "mean loss, adjusted - fixed re-warm peak (nats)"),
          ("lower_adjacent_kl", "mean adjacent KL, progressive - independent (nats)"),
          ("lower_adjacent_kl_at_equal_gap", "adjacent KL at equal quality gap, arm effect (nats)"))


def point_row(label: str, c: dict) -> dict:
    largest = c["members"][-1]["arms"]
    ind = largest.get("independent", {})
    claims = {cl["name"]: cl for cl in c["claims"]}
    row = {"point": label, "seeds": len(c["seeds"]),
           "tokens_per_param": (ind["tokens"] / ind["non_embedding_params"]) if ind.get("non_embedding_params") else None,
           "epochs_largest": {a: r.get("epochs") for a, r in largest.items()},
           "flops_saved": {a: v for a, v in c["flops_saved_fraction"].items() if a != "independent"},
           "claims": {}}
    for name, _ in CLAIMS:
        if name in claims:
            cl = claims[name]
            row["claims"][name] = {k: cl.get(k) for k in ("verdict", "mean_paired_difference", "ci95",
                                                          "min_detectable_effect", "seeds_to_decide")}
    return row


def fmt(cl: dict | None) -> str:
    if not cl:
        return "—"
    ci = cl.get("ci95")
    interval = "" if ci is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    return f"{cl['mean_paired_difference']:+.4f}{interval} **{cl['verdict']}**"


def markdown(rows: list[dict]) -> str:
    out = ["| | " + " | ".join(r["point"] for r in rows) + " |", "|---|" + "---:|" * len(rows),
           "| seeds | " + " | ".join(str(r["seeds"]) for r in rows) + " |",
           "| tokens per parameter (largest member alone) | " + " | ".join(
               "—" if r["tokens_per_param"] is None else f"{r['tokens_per_param']:.2f}" for r in rows) + " |",
           "| passes over the data, largest member (progressive / independent) | " + " | ".join(
               f"{r['epochs_largest'].get('progressive') or 0:.2f} / {r['epochs_largest'].get('independent') or 0:.2f}"
               for r in rows) + " |",
           "| FLOPs saved (progressive) | " + " | ".join(
               f"{100 * (r['flops_saved'].get('progressive') or 0):.1f}%" for r in rows) + " |"]
    for name, what in CLAIMS:
        out.append(f"| `{name}`: {what} | " + " | ".join(fmt(r["claims"].get(name)) for r in rows) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", action="append", required=True, help="LABEL=path/to/comparison.json")
    parser.add_argument("--out", default="budget_points")
    args = parser.parse_args()
    rows = []
    for spec in args.point:
        label, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"error: --point={spec}: give LABEL=path/to/comparison.json (an existing file)")
        rows.append(point_row(label, json.loads(Path(path).read_text())))
    Path(args.out + ".json").write_text(json.dumps(rows, indent=2))
    Path(args.out + ".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
