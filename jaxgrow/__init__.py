"""jaxgrow: build a family of LLMs both ways: grow it up from its smallest member (progressive training with
function-preserving expansion) or prune it down from its largest and distil (Minitron's recipe), every stage one row
of a transition table.

The package is organised in wings, each importing only the wings below it:

    cli -> family -> (train, eval, serve, interop) -> (expand, prune, data) -> model -> storage -> config

Public API: jaxgrow.model (init_params, logits), jaxgrow.expand (expand_params, expand_opt_state), jaxgrow.prune
(importance, prune_params, prune_opt_state), jaxgrow.train.schedules (make_lr_schedule), jaxgrow.model.flops,
jaxgrow.family.budgets, jaxgrow.interop.hf (save_pretrained, load_params), jaxgrow.serve.decode (generate,
generate_batch) and jaxgrow.serve.speculative (speculative_generate). The command line is jaxgrow.main
(`jaxgrow --help`); each wing's __init__ says what it owns and what it may import.
"""

__version__ = "0.1.0"
