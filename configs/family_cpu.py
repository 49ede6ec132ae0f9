"""Four members, each ~2x the previous in non-embedding parameters (1.6M, 3.3M, 6.3M, 12.6M).

Sized so that a progressive run plus an independent run finish in about 25 minutes on 2 CPU cores;
the CPU-scale reproduction of the paper (experiments/reproduce_paper.py) runs on it.
"""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=4096, head_dim=64, num_kv_heads=1, remat_policy="dots")
    add_member(c, "m1", hidden_size=192, ffn_size=512, num_layers=4, num_heads=3)
    add_member(c, "m2", hidden_size=256, ffn_size=640, num_layers=5, num_heads=4)
    add_member(c, "m3", hidden_size=320, ffn_size=832, num_layers=6, num_heads=5)
    add_member(c, "m4", hidden_size=384, ffn_size=1024, num_layers=8, num_heads=6, num_kv_heads=2)
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 24
    c.budget.largest_tokens = 1_300_000
    c.lr.rule = "power"
    c.lr.peak = 2e-3      # at n_ref
    c.lr.n_ref = 3_000_000
    c.lr.alpha = 0.5
    c.checkpoint.every_steps = 100
    c.log.eval_every_steps = 100
    return c
