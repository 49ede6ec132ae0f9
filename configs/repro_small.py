"""The reproduction sized for statistics on 2 CPU cores: four members whose non-embedding parameters double
(0.10M, 0.20M, 0.39M, 0.79M, as the paper's 1B/2B/4B/8B family does), five arms x three seeds
(experiments/reproduce_paper.py --seeds 0,1,2), every arm within one pass over the Shakespeare corpus.

Exact doublings matter for the compute claim: with T_i ∝ N_i the independent family costs sum_i F_i T_i and the
progressive one F_L T_L, so the saving is ~1 - 64/85 ≈ 25% for four doublings (more here, where the LM head is a
large share of F_i), but only ~17% for family_tiny's 0.10M/0.30M/0.79M.

The `power` rule is anchored at the smallest member; override it with the fitted rule (reproduce_paper.py
--lr_rule_file, from experiments/lr_sweep.py).
"""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=2048, head_dim=32, num_kv_heads=1)
    add_member(c, "s", hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)     # 98,624 non-embedding
    add_member(c, "m", hidden_size=64, ffn_size=192, num_layers=4, num_heads=2)     # 197,184 (depth x2)
    add_member(c, "l", hidden_size=96, ffn_size=256, num_layers=4, num_heads=3)     # 394,080 (width)
    add_member(c, "xl", hidden_size=128, ffn_size=384, num_layers=4, num_heads=4, num_kv_heads=2)  # 787,584
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 8
    c.budget.largest_tokens = 800_000
    c.lr.rule = "power"
    c.lr.peak = 3e-3      # at n_ref = the smallest member
    c.lr.n_ref = 98_624
    c.lr.alpha = 0.5
    c.checkpoint.every_steps = 100
    c.log.eval_every_steps = 50
    c.log.progress = False
    return c
