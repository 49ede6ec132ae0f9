"""Llama-like 1B, 2B, 4B, 8B members (Yano et al. 2025 family sizes): for `plan` and AOT compilation.

Not trainable on a CPU; on a TPU pod or GPU cluster set the mesh (e.g. --config.mesh.fsdp=-1
--config.mesh.tensor=4) and the data (data.train_files / data.eval_files / data.tokenizer).
Budgets: 20 tokens per parameter for the 8B member alone (Chinchilla), the paper's cost rule for the
others (progressive) or tokens proportional to size (independent).
"""

from jaxgrow.config import add_member
from jaxgrow.config import base_config
from jaxgrow.config import model_config


def get_config():
    c = base_config()
    c.model = model_config(vocab_size=32000, head_dim=128, num_kv_heads=8, rope_theta=500_000.0,
                           dtype="bfloat16", remat_policy="full")
    add_member(c, "1b", hidden_size=2048, ffn_size=5632, num_layers=18, num_heads=16)
    add_member(c, "2b", hidden_size=2048, ffn_size=8192, num_layers=30, num_heads=16)
    add_member(c, "4b", hidden_size=3072, ffn_size=10240, num_layers=32, num_heads=24)
    add_member(c, "8b", hidden_size=4096, ffn_size=14336, num_layers=36, num_heads=32)
    c.data.seq_len = 4096
    c.data.batch_size = 512        # 2M tokens per step
    c.budget.largest_tokens = 160_000_000_000
    c.lr.rule = "table"            # GPT-3's (N, LR) pairs, log-log interpolated
    c.lr.warmup_fraction = 0.01
    c.optimizer.grad_accum_steps = 8  # micro-batches keep activations in HBM (see `plan`)
    c.checkpoint.every_steps = 1000
    c.checkpoint.async_save = True
    c.log.every_steps = 50
    c.log.eval_every_steps = 2000
    return c
