"""Config schema (every key commented once, here), validation with field-named errors, param counts.

A run config is an `ml_collections.ConfigDict` made by `base_config()` and adjusted by a
`configs/*.py` file's `get_config()`. A run trains a *family*: an ordered list of members, each a
model config. `config.model` holds the shared model settings; `config.members.<name>` lists each
member's position in the family and its overrides of `config.model` (sizes, usually). A config with
one member is an ordinary single-model training run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import ml_collections


MODEL_KEYS = ("vocab_size", "hidden_size", "ffn_size", "num_layers", "num_heads", "num_kv_heads",
              "head_dim", "tie_embeddings", "rope_theta", "norm_eps", "dtype", "init_std",
              "attention_impl", "remat_policy", "scan_unroll")
SIZE_KEYS = ("vocab_size", "hidden_size", "ffn_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn", "auto", "reference")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
EXPANSION_METHODS = ("zero", "tile", "bert2bert_fpi", "bert2bert_aki")
DEPTH_STRATEGIES = ("identity", "stack", "interleave")
DEPTH_POSITIONS = ("interleave", "top")
LR_RULES = ("constant", "power", "kaplan", "table")
LR_DECAYS = ("cosine", "linear", "wsd")

# Keys that may differ from the saved config when a run is resumed: run length, logging, layout of
# the job on devices, and the override switch itself.
RESUMABLE_KEYS = ("budget_scale", "budget.", "log.", "checkpoint.every_steps", "checkpoint.keep",
                  "checkpoint.async_save", "checkpoint.async_save_remote", "compile_cache_dir", "profile_steps",
                  "allow_config_change", "mesh.",
                  "model.remat_policy", "model.attention_impl", "model.scan_unroll", "distributed",
                  "data.eval_batches", "data.prefetch", "data.workers", "data.read_ahead", "data.tokenize_workers",
                  "eval.")


class InputError(ValueError):
    """Bad user input (config, data, workdir, mesh, CLI): exit code 2 with this one-line message."""


class TryLater(Exception):
    """Nothing is wrong with the input, but the run cannot start now (another live job holds its workdir): exit code
    75 (EX_TEMPFAIL) with this one-line message, so a scheduler retries the job later. Not an InputError (exit 2)."""


class UsageError(InputError):
    """A malformed command line (the CLI's flags)."""


class ConfigError(InputError):
    """An invalid config; the message names the field and what would be valid."""


def frozen(cfg: Any) -> ml_collections.FrozenConfigDict:
    """A hashable, immutable copy of a config (for jit static arguments and lru_cache keys)."""
    return cfg if isinstance(cfg, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(cfg)


def model_config(**overrides) -> ml_collections.ConfigDict:
    """A model config with Llama-style defaults; keyword arguments override them."""
    m = ml_collections.ConfigDict()
    m.vocab_size = 4096        # tokens in the vocabulary (= the tokenizer's vocab size)
    m.hidden_size = 256        # D: width of the residual stream
    m.ffn_size = 768           # F: SwiGLU hidden width
    m.num_layers = 4           # L: transformer blocks (stacked on one axis and scanned)
    m.num_heads = 4            # H: query heads
    m.num_kv_heads = 4         # K: key/value heads (H % K == 0; K == H is MHA, K == 1 is MQA)
    m.head_dim = 64            # d: per-head width, independent of hidden_size
    m.tie_embeddings = False   # share the token embedding with the LM head
    m.rope_theta = 10000.0     # RoPE base frequency
    m.norm_eps = 1e-5          # RMSNorm epsilon
    m.dtype = "float32"        # compute dtype: float32 | bfloat16 (params are always float32)
    m.init_std = 0.02          # std of normal initialisers (residual writers: / sqrt(2L))
    m.attention_impl = "auto"  # xla | cudnn | auto (cudnn on GPU when possible) | reference (einsum)
    m.remat_policy = "none"    # none | full | dots | dots_no_batch (jax.checkpoint policies)
    m.scan_unroll = 1          # layers per iteration of the layer scan (num_layers = fully unrolled)
    m.update(overrides)
    return m


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                     # seeds init, data order and expansion randomness
    c.mode = "progressive"         # the preset of the transition table: progressive (grow each member from the last) | independent (each from scratch) | pruned (the largest from scratch, then each smaller one pruned from it and distilled)
    c.transitions = ""             # the table spelled out instead, one row per member in training order: "small=scratch; medium=grow(small); large=grow(medium); small2=grow(small)+distil(large)" (family/transitions.py)
    c.budget_scale = 1.0           # multiplies every token/step budget (e.g. 0.05 for a smoke run)
    c.allow_config_change = False  # resume even if the config differs from the saved one
    c.skip_nonfinite_steps = 0     # tolerate this many non-finite steps (update skipped) per stage
    c.profile_steps = ""           # "a:b" writes a jax.profiler trace of steps [a, b) of each stage
    c.distributed = "auto"         # jax.distributed.initialize: auto (TPU pod / JAX_COORDINATOR_ADDRESS) | on | off

    c.model = model_config()       # shared model settings (see model_config)
    c.members = ml_collections.ConfigDict()  # name -> {position, tokens, <model overrides>}

    c.budget = ml_collections.ConfigDict()
    c.budget.largest_tokens = 2_000_000  # tokens the largest member would get trained alone
    c.budget.rule = "paper"        # paper: independent tokens ∝ size; progressive stages add up to the largest alone
    c.budget.distill_share = 0.2   # pruned rows share this part of their source's cost; the source trains on the rest (family/budgets.py)
    _add_data(c)
    _add_optimization(c)
    _add_transitions(c)
    _add_runtime(c)
    return c


def _add_data(c: ml_collections.ConfigDict) -> None:
    c.data = ml_collections.ConfigDict()
    c.data.train_files = ""        # a tokenized dir (jaxgrow tokenize) or comma-separated globs of .txt/.jsonl(.gz|.zst)/.parquet, local or gs://...; "" = the shipped Shakespeare corpus
    c.data.eval_files = ""         # held-out globs; "" = the shipped corpus's held-out works
    c.data.text_field = "text"     # field read from .jsonl lines
    c.data.tokenizer = ""          # a HF tokenizer.json, a SentencePiece tokenizer.model or a tiktoken file (or a dir holding one); "" = the tokenized dir's, else train a byte-level BPE
    c.data.seq_len = 128           # tokens per training sequence
    c.data.batch_size = 16         # global batch (sequences per step)
    c.data.eval_batches = 8        # eval batches per evaluation (fewer if the eval set is smaller)
    c.data.prefetch = 2            # batches prefetched to devices
    c.data.eos_token = ""          # end-of-document token; "" = the first of <|endoftext|>, </s>, <|end_of_text|>, <eos> present
    c.data.bos_token = ""          # token put before every document ("" = none; e.g. "<s>", "<|begin_of_text|>")
    c.data.document_masking = False  # packed sequences attend only within their own document (segment ids from EOS)
    c.data.workers = 0             # grain worker processes reading training windows (0 = read in the training process)
    c.data.read_ahead = -1         # batches read ahead in threads (ordered; the data state is unchanged): -1 = 4 from a bucket, 0 locally
    c.data.tokenize_workers = 1    # processes tokenizing raw train/eval text into the workdir cache
    c.data.mixture = ml_collections.ConfigDict()  # name -> {weight, train_files, eval_files}; replaces train/eval_files


def _add_optimization(c: ml_collections.ConfigDict) -> None:
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.b1 = 0.9           # Adam beta1
    c.optimizer.b2 = 0.95          # Adam beta2
    c.optimizer.eps = 1e-8         # Adam epsilon
    c.optimizer.weight_decay = 0.1  # decoupled weight decay (not on norm gains)
    c.optimizer.clip_norm = 1.0    # global-norm gradient clipping (0 = off)
    c.optimizer.grad_accum_steps = 1  # micro-batches per step (batch_size must divide evenly)

    c.lr = ml_collections.ConfigDict()
    c.lr.rule = "constant"         # peak-LR rule: constant | power | kaplan | table
    c.lr.peak = 3e-3               # peak LR for `constant`; the base LR at n_ref for `power`
    c.lr.n_ref = 1_000_000         # reference non-embedding params for `power`
    c.lr.alpha = 0.5               # exponent for `power`: peak = peak * (N / n_ref) ** -alpha
    c.lr.table = "gpt3"            # `table` pairs: "gpt3" or "N:lr,N:lr,..." (log-log interpolation)
    c.lr.decay = "cosine"          # cosine | linear | wsd (warmup-stable-decay)
    c.lr.warmup_fraction = 0.05    # warmup steps as a fraction of each stage's steps
    c.lr.min_lr_ratio = 0.1        # LR floor as a fraction of the peak
    c.lr.wsd_decay_fraction = 0.2  # fraction of a stage spent decaying for `wsd`


def _add_transitions(c: ml_collections.ConfigDict) -> None:
    """How stages start and what they minimise besides cross-entropy: growth, consistency, distillation, pruning."""
    c.expansion = ml_collections.ConfigDict()
    c.expansion.method = "zero"    # zero | tile | bert2bert_fpi | bert2bert_aki (width growth)
    c.expansion.depth = "identity"  # identity | stack | interleave (depth growth)
    c.expansion.depth_position = "interleave"  # where identity blocks go: interleave | top
    c.expansion.noise = 0.0        # tile: function-preserving symmetry-breaking noise (relative std)
    c.expansion.opt_state = "carry"  # carry (Adam moments mapped like the gradients; exact where the map is) | reset

    c.consistency = ml_collections.ConfigDict()
    c.consistency.weight = 0.0     # weight of KL(p_prev || p_this) against the frozen previous member (0 = off)
    c.consistency.fraction = 0.5   # fraction of each stage over which the weight decays linearly to 0

    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""         # teacher of every row without one: a member (rows after its stage) or a checkpoint path (every row); "" = the rows' own (pruned rows: their source; a `prune`d run: its parent)
    c.distill.weight = 1.0         # weight of KL(p_teacher || p_student) in rows that distil (0 = off everywhere)
    c.distill.temperature = 1.0    # softens both distributions; the KL is scaled by temperature^2
    c.distill.ce_weight = 1.0      # weight of the cross-entropy term beside it (0: distil only)

    c.prune = ml_collections.ConfigDict()
    c.prune.calibration_batches = 8  # training batches (from the data stream's start) whose activations rank units
    c.prune.opt_state = "reset"    # reset (fresh Adam moments, as Minitron) | carry (the kept units' moments)


def _add_runtime(c: ml_collections.ConfigDict) -> None:
    """Where and how the run executes: mesh, checkpoints, logs, in-loop benchmarks."""
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1                # data-parallel axis size (-1 = fill with the remaining devices)
    c.mesh.fsdp = -1               # fully-sharded data-parallel axis size (-1 = fill)
    c.mesh.tensor = 1              # tensor-parallel axis size (-1 = fill)
    c.mesh.dcn_data = 1            # data parallelism across slices (multi-pod); devices per slice = total / dcn_data

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100  # save the stage state every N steps (and always at the end)
    c.checkpoint.keep = 2          # rolling checkpoints kept per stage (member checkpoints are never deleted)
    c.checkpoint.async_save = False  # orbax async checkpointing (the loop waits before the next save)
    c.checkpoint.async_save_remote = True  # async on gs:// workdirs, where a save uploads the whole state (training goes on)
    c.compile_cache_dir = ""       # persistent XLA compilation cache: "" = $JAX_COMPILATION_CACHE_DIR, else W/xla_cache (a local scratch dir for a remote W); a path or gs://...; "none" = off

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 10         # metrics.jsonl / TensorBoard interval (the loop syncs with the host only here)
    c.log.eval_every_steps = 50    # held-out eval interval (and always at the end of a stage)
    c.log.progress = True          # tqdm progress bar on the terminal

    c.eval = ml_collections.ConfigDict()
    c.eval.suite = ""              # standard benchmarks during training (jaxgrow/eval/benchmarks): "" = off, core | math | tasks
    c.eval.limit = 50              # items per task (MMLU: per subject) for the in-loop suite
    c.eval.shots = 0               # few-shot examples per item
    c.eval.every_steps = 0         # run it every N steps (0: only at the end of each stage)



# ----------------------------------------------------------------------------------------------
# Family members


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    position: int
    model: ml_collections.ConfigDict
    tokens: int  # explicit token budget override (-1: from the budget rule)


# A member name becomes a directory (members/<name>, stages/<k>-<name>) and a config key (config.members.<name>):
# letters, digits, '_' and '-', starting with a letter or digit (so never '.', '..', an absolute or a nested path;
# ConfigDict keys cannot hold dots anyway).
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_member_name(name: Any, field: str = "members") -> None:
    if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
        raise ConfigError(f"{field}: member name {name!r} is not a valid name; use letters, digits, '_' and '-', "
                          "starting with a letter or digit (it names the directories members/<name> and stages/<k>-<name>)")


def add_member(config: ml_collections.ConfigDict, name: str, tokens: int = -1, **model_overrides) -> None:
    """Appends a member to `config.members` (its position is the order of calls)."""
    check_member_name(name, "add_member")
    unknown = sorted(set(model_overrides) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"members.{name}: unknown model keys {unknown}; valid: {list(MODEL_KEYS)}")
    entry = ml_collections.ConfigDict()
    entry.position = len(config.members)
    entry.tokens = tokens
    entry.update(model_overrides)
    config.members[name] = entry


def members(config: ml_collections.ConfigDict) -> list[Member]:
    """The family in order. A config without members is a one-member family named 'model'."""
    if len(config.members) == 0:
        return [Member("model", 0, config.model, -1)]
    out = []
    for name, entry in config.members.items():
        check_member_name(name)
        if not isinstance(entry, ml_collections.ConfigDict):
            raise ConfigError(f"members.{name}={entry!r} must be a dict of model overrides (use add_member)")
        model = ml_collections.ConfigDict(config.model.to_dict())
        overrides = {k: v for k, v in entry.items() if k not in ("position", "tokens")}
        for key in overrides:
            if key not in MODEL_KEYS:
                raise ConfigError(f"members.{name}.{key} is not a model key; valid: {list(MODEL_KEYS)}")
        model.update(overrides)
        out.append(Member(name, entry.position, model, entry.tokens))
    out.sort(key=lambda m: m.position)
    positions = [m.position for m in out]
    if positions != list(range(len(out))):
        raise ConfigError(f"members.*.position must be 0..{len(out) - 1} without repeats, got {positions}")
    return out


# ----------------------------------------------------------------------------------------------
# Validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_model(m: Any, prefix: str = "model", overridden: Any = None) -> None:
    """Checks one model config. Fields are named `{prefix}.{key}`; for a family member, keys it does
    not override (not in `overridden`) are named `model.{key}`, where the user set them."""

    def f(key: str) -> str:
        return f"{prefix}.{key}" if overridden is None or key in overridden else f"model.{key}"

    for key in SIZE_KEYS:
        value = m[key]
        _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
               f"{f(key)}={value!r} must be a positive integer")
    _check(m.vocab_size < 2**31, f"{f('vocab_size')}={m.vocab_size} must be < 2**31 (token ids are int32)")
    _check(m.num_heads % m.num_kv_heads == 0,
           f"{f('num_heads')}={m.num_heads} must be divisible by {f('num_kv_heads')}={m.num_kv_heads}")
    _check(m.dtype in DTYPES, f"{f('dtype')}={m.dtype!r} must be one of {list(DTYPES)}")
    _check(m.attention_impl in ATTENTION_IMPLS,
           f"{f('attention_impl')}={m.attention_impl!r} must be one of {list(ATTENTION_IMPLS)}")
    _check(m.remat_policy in REMAT_POLICIES,
           f"{f('remat_policy')}={m.remat_policy!r} must be one of {list(REMAT_POLICIES)}")
    _check(isinstance(m.scan_unroll, int) and m.scan_unroll >= 1, f"{f('scan_unroll')}={m.scan_unroll!r} must be >= 1")
    _check(m.head_dim % 2 == 0, f"{f('head_dim')}={m.head_dim} must be even (RoPE rotates pairs)")
    _check(m.rope_theta > 0, f"{f('rope_theta')}={m.rope_theta} must be > 0")
    _check(m.norm_eps > 0, f"{f('norm_eps')}={m.norm_eps} must be > 0")
    _check(m.init_std > 0, f"{f('init_std')}={m.init_std} must be > 0")


def validate_shared(src: Any, dst: Any, src_name: str = "source", dst_name: str = "target") -> None:
    """Members of one family share the vocabulary (one tokenizer) and head_dim (no transition changes it)."""
    for key in ("vocab_size", "head_dim"):
        _check(src[key] == dst[key],
               f"{dst_name}.{key}={dst[key]} must equal {src_name}.{key}={src[key]} (expansion cannot change it)")


def validate_growth(src: Any, dst: Any, src_name: str = "source", dst_name: str = "target") -> None:
    """A family step (or an expansion) must not shrink any size nor change vocab or head_dim."""
    validate_shared(src, dst, src_name, dst_name)
    for key in ("hidden_size", "ffn_size", "num_layers", "num_heads", "num_kv_heads"):
        _check(dst[key] >= src[key],
               f"{dst_name}.{key}={dst[key]} shrinks from {src_name}.{key}={src[key]}; sizes may only grow")


def _leaves(node: Any, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


# ----------------------------------------------------------------------------------------------
# Types: one schema pass before any range check. The schema is base_config() itself (and model_config() for a
# member's overrides): a key whose default is an int takes an int (never a bool, never a float, even 64.0), a float
# key takes a finite int or float, a str key a str, a bool key a bool; so every later check compares numbers.

NUMBER_KEYS = ("budget.largest_tokens", "lr.n_ref")  # int defaults that may also be given as a float (4e6 tokens)


def _type_error(name: str, value: Any, expected: Any) -> str:
    want = {bool: "True or False", int: "an integer", float: "a finite number", str: "a string"}.get(
        type(expected), type(expected).__name__)
    return f"{name}={value!r} ({type(value).__name__}) must be {want}"


def check_value_type(name: str, value: Any, expected: Any) -> None:
    """`value` has the type of the schema default `expected` (module comment above)."""
    if isinstance(expected, bool):
        ok = isinstance(value, bool)
    elif isinstance(expected, int) and name not in NUMBER_KEYS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(expected, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(_type_error(name, value, expected))


def check_types(config: Any) -> None:
    """Every key of a run config against the schema's type (a config that is not a ConfigDict, a section that is
    not a dict, a member override of the wrong type), then no float anywhere is NaN or infinite."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict; start from "
                          "jaxgrow.config.base_config()")
    schema = base_config()
    for name, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={value} must be a finite number")
        section = name.split(".")[0]
        if section in ("members",) or name.startswith("data.mixture."):
            continue
        expected = _schema_leaf(schema, name)
        if expected is not None:
            check_value_type(name, value, expected)
    for section in [k for k, v in schema.items() if isinstance(v, ml_collections.ConfigDict)]:
        if not isinstance(config.get(section), (ml_collections.ConfigDict, dict)):
            raise ConfigError(f"{section}={config.get(section)!r} must be a dict of keys (see jaxgrow/config.py)")
    model_schema = model_config()
    for member, entry in config.members.items():
        if not isinstance(entry, (ml_collections.ConfigDict, dict)):
            continue  # members() names it
        for key, value in entry.items():
            if key in ("position", "tokens"):
                check_value_type(f"members.{member}.{key}", value, 0)
            elif key in model_schema:
                check_value_type(f"members.{member}.{key}", value, model_schema[key])


def _schema_leaf(schema: Any, name: str) -> Any:
    node = schema
    for part in name.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return None
        node = node[part]
    return None if isinstance(node, (ml_collections.ConfigDict, dict)) else node


def validate(config: ml_collections.ConfigDict) -> list[Member]:
    """Checks the whole run config, types first (check_types), then every key's range; returns the ordered members.
    Raises ConfigError naming the field."""
    check_types(config)
    _validate_run(config)
    fam = _validate_members(config)
    _validate_data_and_optimizer(config)
    _validate_lr_and_transitions(config)
    _validate_runtime(config)
    return fam


def _validate_run(config: ml_collections.ConfigDict) -> None:
    _check(config.mode in ("progressive", "independent", "pruned"),
           f"mode={config.mode!r} must be 'progressive', 'independent' or 'pruned' (the presets of the transition "
           "table; config.transitions spells one out)")
    _check(config.budget_scale > 0, f"budget_scale={config.budget_scale} must be > 0")
    _check(config.budget.largest_tokens > 0, f"budget.largest_tokens={config.budget.largest_tokens} must be > 0")
    _check(config.budget.rule == "paper", f"budget.rule={config.budget.rule!r}: only 'paper' is implemented")
    _check(config.skip_nonfinite_steps >= 0, f"skip_nonfinite_steps={config.skip_nonfinite_steps} must be >= 0")
    _check(config.distributed in ("auto", "on", "off"),
           f"distributed={config.distributed!r} must be one of ['auto', 'on', 'off']")
    if config.profile_steps:
        parts = config.profile_steps.split(":")
        _check(len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) < int(parts[1]),
               f"profile_steps={config.profile_steps!r} must be 'a:b' with integers a < b")


def _validate_members(config: ml_collections.ConfigDict) -> list[Member]:
    fam = members(config)  # config.model alone is checked when it is the only member
    for mem in fam:
        if len(config.members) == 0:
            validate_model(mem.model)
        else:
            validate_model(mem.model, f"members.{mem.name}", overridden=config.members[mem.name])
    for prev, cur in zip(fam, fam[1:]):
        if config.get("transitions", ""):  # a spelled-out table: each row is checked (family/checks.py)
            validate_shared(prev.model, cur.model, f"members.{prev.name}", f"members.{cur.name}")
        else:  # the presets read the family smallest to largest
            validate_growth(prev.model, cur.model, f"members.{prev.name}", f"members.{cur.name}")
    return fam


def _validate_data_and_optimizer(config: ml_collections.ConfigDict) -> None:
    d = config.data
    for key in ("seq_len", "batch_size", "eval_batches", "prefetch"):
        _check(isinstance(d[key], int) and d[key] > 0, f"data.{key}={d[key]!r} must be a positive integer")
    _check(isinstance(d.get("read_ahead", -1), int) and d.get("read_ahead", -1) >= -1,
           f"data.read_ahead={d.get('read_ahead')!r} must be an integer >= -1 (-1: 4 from a bucket, 0 locally)")
    for key in ("workers", "tokenize_workers"):
        _check(isinstance(d.get(key, 0), int) and d.get(key, 0) >= (1 if key == "tokenize_workers" else 0),
               f"data.{key}={d.get(key)!r} must be an integer >= {1 if key == 'tokenize_workers' else 0}")
    o = config.optimizer
    _check(o.grad_accum_steps >= 1, f"optimizer.grad_accum_steps={o.grad_accum_steps} must be >= 1")
    _check(d.batch_size % o.grad_accum_steps == 0,
           f"data.batch_size={d.batch_size} must be divisible by optimizer.grad_accum_steps={o.grad_accum_steps}")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1={o.b1}, optimizer.b2={o.b2} must be in [0, 1)")
    _check(o.weight_decay >= 0 and o.clip_norm >= 0, "optimizer.weight_decay and optimizer.clip_norm must be >= 0")


def _validate_lr_and_transitions(config: ml_collections.ConfigDict) -> None:
    lr = config.lr
    _check(lr.rule in LR_RULES, f"lr.rule={lr.rule!r} must be one of {list(LR_RULES)}")
    _check(lr.decay in LR_DECAYS, f"lr.decay={lr.decay!r} must be one of {list(LR_DECAYS)}")
    _check(lr.peak > 0, f"lr.peak={lr.peak} must be > 0")
    _check(0 <= lr.warmup_fraction < 1, f"lr.warmup_fraction={lr.warmup_fraction} must be in [0, 1)")
    _check(0 <= lr.min_lr_ratio <= 1, f"lr.min_lr_ratio={lr.min_lr_ratio} must be in [0, 1]")
    _check(0 < lr.wsd_decay_fraction <= 1, f"lr.wsd_decay_fraction={lr.wsd_decay_fraction} must be in (0, 1]")
    _check(lr.n_ref > 0, f"lr.n_ref={lr.n_ref} must be > 0")
    e = config.expansion
    _check(e.method in EXPANSION_METHODS, f"expansion.method={e.method!r} must be one of {list(EXPANSION_METHODS)}")
    _check(e.depth in DEPTH_STRATEGIES, f"expansion.depth={e.depth!r} must be one of {list(DEPTH_STRATEGIES)}")
    _check(e.depth_position in DEPTH_POSITIONS,
           f"expansion.depth_position={e.depth_position!r} must be one of {list(DEPTH_POSITIONS)}")
    _check(e.opt_state in ("carry", "reset"), f"expansion.opt_state={e.opt_state!r} must be 'carry' or 'reset'")
    _check(e.noise >= 0, f"expansion.noise={e.noise} must be >= 0")
    _check(config.consistency.weight >= 0, f"consistency.weight={config.consistency.weight} must be >= 0")
    dist = config.distill
    _check(isinstance(dist.teacher, str), f"distill.teacher={dist.teacher!r} must be a member name or a checkpoint path")
    _check(dist.weight >= 0, f"distill.weight={dist.weight} must be >= 0 (0 = off)")
    _check(dist.temperature > 0, f"distill.temperature={dist.temperature} must be > 0")
    _check(dist.ce_weight >= 0, f"distill.ce_weight={dist.ce_weight} must be >= 0 (0: the KL term alone)")
    _check(0 <= config.budget.distill_share < 1,
           f"budget.distill_share={config.budget.distill_share} must be in [0, 1)")
    pr = config.prune
    _check(isinstance(pr.calibration_batches, int) and not isinstance(pr.calibration_batches, bool)
           and pr.calibration_batches >= 1, f"prune.calibration_batches={pr.calibration_batches!r} must be an integer >= 1")
    _check(pr.opt_state in ("carry", "reset"), f"prune.opt_state={pr.opt_state!r} must be 'carry' or 'reset'")
    _check(0 < config.consistency.fraction <= 1, f"consistency.fraction={config.consistency.fraction} must be in (0, 1]")


def _validate_runtime(config: ml_collections.ConfigDict) -> None:
    for axis in ("data", "fsdp", "tensor"):
        v = config.mesh[axis]
        _check(isinstance(v, int) and (v > 0 or v == -1), f"mesh.{axis}={v!r} must be a positive integer or -1")
    _check(sum(config.mesh[a] == -1 for a in ("data", "fsdp", "tensor")) <= 1,
           "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    _check(config.mesh.dcn_data >= 1, f"mesh.dcn_data={config.mesh.dcn_data} must be >= 1")
    _check(config.checkpoint.every_steps > 0, f"checkpoint.every_steps={config.checkpoint.every_steps} must be > 0")
    _check(config.checkpoint.keep >= 1, f"checkpoint.keep={config.checkpoint.keep} must be >= 1")
    _check(config.log.every_steps > 0, f"log.every_steps={config.log.every_steps} must be > 0")
    _check(config.log.eval_every_steps > 0, f"log.eval_every_steps={config.log.eval_every_steps} must be > 0")


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (added and removed keys included)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_diff(a, b, name + "."))
        elif a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)):
            out.append(name)
    return out


def drift(saved: dict, current: dict) -> list[str]:
    """Differing keys that are not run-length, logging or placement keys (see RESUMABLE_KEYS)."""
    return [k for k in config_diff(saved, current)
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)]


def rope_context(model_cfg: Any) -> int:
    """The model's RoPE-usable context: the largest power of two not above the wavelength of the
    slowest RoPE frequency pair, 2*pi*theta^((d-2)/d). Past it the slowest pair wraps around, so two
    positions can no longer be told apart by any pair; it does not depend on data.seq_len."""
    d = int(model_cfg.head_dim)
    wavelength = 2 * math.pi * float(model_cfg.rope_theta) ** ((d - 2) / d)
    return 2 ** int(math.floor(math.log2(max(wavelength, 2.0))))
