"""Two very small members for the multi-device / multi-process tests: every mesh axis of size 2
divides the heads, KV heads, FFN and vocab, and each run compiles in seconds."""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=512, head_dim=16, num_kv_heads=2)
    add_member(c, "small", hidden_size=32, ffn_size=64, num_layers=1, num_heads=2, tokens=2048)
    add_member(c, "large", hidden_size=64, ffn_size=128, num_layers=2, num_heads=4, tokens=6144)
    c.data.seq_len = 32
    c.data.batch_size = 8
    c.data.eval_batches = 1
    c.lr.peak = 3e-3
    c.log.progress = False
    c.log.every_steps = 1
    c.log.eval_every_steps = 1000
    c.checkpoint.every_steps = 1000
    return c
