"""jaxgrow: build a family of LLMs by progressive training with function-preserving expansion.

The package is organised in wings, each importing only the wings below it:

    cli -> family -> (train, eval, serve, interop) -> (expand, data) -> model -> storage -> config

Public API: jaxgrow.model (init_params, logits), jaxgrow.expand (expand_params, expand_opt_state),
jaxgrow.train.schedules (make_lr_schedule), jaxgrow.model.flops, jaxgrow.family.budgets,
jaxgrow.interop.hf (save_pretrained, load_params), jaxgrow.serve.decode (generate, generate_batch) and
jaxgrow.serve.speculative (speculative_generate). The command line is jaxgrow.main (`jaxgrow --help`);
README.md has a table of the wings and their modules. jaxgrow.schedules, jaxgrow.hf, jaxgrow.sampling and
jaxgrow.inference are deprecated aliases of their new homes, kept for one release.
"""

__version__ = "0.1.0"
