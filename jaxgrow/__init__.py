"""jaxgrow: build a family of LLMs by progressive training with function-preserving expansion.

Public modules: jaxgrow.model (init_params, logits), jaxgrow.expand (expand_params,
expand_opt_state), jaxgrow.schedules (make_lr_schedule), jaxgrow.flops, jaxgrow.hf.
"""

__version__ = "0.1.0"
