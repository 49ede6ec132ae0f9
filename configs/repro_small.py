"""The reproduction sized for statistics on 2 CPU cores: three members, five arms x three seeds in well under
45 minutes (experiments/reproduce_paper.py --seeds 0,1,2), every arm within one pass over the Shakespeare corpus.

Members as in family_tiny (non-embedding params 0.10M, 0.31M, 0.79M); the `power` rule anchored at the smallest
member (override with the fitted rule: reproduce_paper.py --lr_rule_file, from experiments/lr_sweep.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import family_tiny  # noqa: E402  (the same members and data)


def get_config():
    c = family_tiny.get_config()
    c.data.eval_batches = 8
    c.lr.rule = "power"
    c.lr.peak = 3e-3      # at n_ref = the smallest member
    c.lr.n_ref = 98_624
    c.lr.alpha = 0.5
    c.checkpoint.every_steps = 100
    c.log.eval_every_steps = 50
    c.log.progress = False
    return c
