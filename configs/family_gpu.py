"""The family_cpu experiment sized for one H200: four members of 4M, 9M, 23M and 44M non-embedding
parameters (each ~2x the previous), bf16 compute, 4M tokens for the largest member alone.
experiments/reproduce_paper.py runs its four arms in about 8 minutes on one H200.
"""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=8192, head_dim=64, num_kv_heads=2, dtype="bfloat16")
    add_member(c, "g1", hidden_size=256, ffn_size=704, num_layers=6, num_heads=4, num_kv_heads=1)
    add_member(c, "g2", hidden_size=384, ffn_size=1024, num_layers=6, num_heads=6)
    add_member(c, "g3", hidden_size=512, ffn_size=1408, num_layers=8, num_heads=8)
    add_member(c, "g4", hidden_size=640, ffn_size=1792, num_layers=10, num_heads=10)
    c.data.seq_len = 256
    c.data.batch_size = 32
    c.data.eval_batches = 16
    c.budget.largest_tokens = 4_000_000
    c.lr.rule = "power"
    c.lr.peak = 1e-3      # at n_ref
    c.lr.n_ref = 10_000_000
    c.lr.alpha = 0.5
    c.checkpoint.every_steps = 200
    c.log.every_steps = 20
    c.log.eval_every_steps = 50
    c.log.progress = False
    return c
