"""Writes the shipped multiple-choice task file from the default corpus's held-out works.

    python experiments/make_tasks.py [--out tasks/shakespeare_continuation.jsonl] [--items 200]

"Which continuation follows this passage?": a 40-word passage, the true next 10 words and three
10-word continuations of other, random passages of the held-out text (jaxgrow.evaluate).
"""

import argparse
import json
from pathlib import Path

from jaxgrow import config as config_lib
from jaxgrow.data import corpus
from jaxgrow.data import formats
from jaxgrow.eval import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tasks/shakespeare_continuation.jsonl")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = config_lib.base_config()
    src = corpus.sources(cfg.data)
    texts = formats.read_documents(src.eval, cfg.data.text_field, "data.eval_files")
    items = evaluate.make_continuation_tasks(texts, n_items=args.items, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"wrote {len(items)} items to {out}")


if __name__ == "__main__":
    main()
