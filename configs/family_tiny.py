"""Three small members grown progressively; the whole pipeline runs in about a minute on 2 CPU cores."""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=2048, head_dim=32, num_kv_heads=1)
    add_member(c, "small", hidden_size=64, ffn_size=192, num_layers=2, num_heads=2)
    add_member(c, "medium", hidden_size=96, ffn_size=256, num_layers=3, num_heads=3)
    add_member(c, "large", hidden_size=128, ffn_size=384, num_layers=4, num_heads=4, num_kv_heads=2)
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 4
    c.budget.largest_tokens = 400_000
    c.lr.peak = 3e-3
    c.checkpoint.every_steps = 50
    c.log.eval_every_steps = 25
    return c
