"""jaxgrow: build a family of LLMs by progressive training with function-preserving expansion.

Public modules: jaxgrow.model (init_params, logits), jaxgrow.expand (expand_params,
expand_opt_state), jaxgrow.schedules (make_lr_schedule), jaxgrow.flops, jaxgrow.budgets,
jaxgrow.hf (save_pretrained, load_params), jaxgrow.sampling (generate). The command line is
jaxgrow.main (`jaxgrow --help`); README.md has a table of where everything lives.
"""

__version__ = "0.1.0"
