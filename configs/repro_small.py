"""The reproduction sized for statistics on 2 CPU cores: three members, five arms x three seeds in well under
45 minutes (experiments/reproduce_paper.py --seeds 0,1,2), every arm within one pass over the Shakespeare corpus.

Members as in family_tiny (non-embedding params 0.10M, 0.31M, 0.79M); the `power` rule anchored at the smallest
member (override with the fitted rule: reproduce_paper.py --lr_rule_file, from experiments/lr_sweep.py).
"""

from jaxgrow.config import add_member, base_config, model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=2048, head_dim=32, num_kv_heads=1)
    add_member(c, "small", hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)
    add_member(c, "medium", hidden_size=96, ffn_size=256, num_layers=3, num_heads=3)
    add_member(c, "large", hidden_size=128, ffn_size=384, num_layers=4, num_heads=4, num_kv_heads=2)
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 8
    c.budget.largest_tokens = 400_000
    c.lr.rule = "power"
    c.lr.peak = 3e-3      # at n_ref = the smallest member
    c.lr.n_ref = 98_624
    c.lr.alpha = 0.5
    c.checkpoint.every_steps = 100
    c.log.eval_every_steps = 50
    c.log.progress = False
    return c
