#!/usr/bin/env python3
"""Build offline text-classification datasets from Debian packages.

Tasks written (one folder each, with train/validation/test.csv.gz + meta.json + LICENSE):
  wordnet_supersense  WordNet noun gloss        -> noun lexicographer file (25 classes)
  wordnet_pos         WordNet gloss             -> part of speech (4 classes)
  fortune_topic       English fortune-cookie text -> fortune file/category (12 classes)
  austen_book         Jane Austen passage       -> novel (6 classes)

Needed Debian packages (downloaded, NOT installed):
  wordnet-base fortunes r-cran-janeaustenr
Needed Python packages: rdata (PyPI; only for austen_book, to read R data).

How to run (Debian bookworm):
  apt-get update
  mkdir -p debs && (cd debs && apt-get download wordnet-base fortunes r-cran-janeaustenr)
  python3 -m venv dvenv && dvenv/bin/pip install rdata
  dvenv/bin/python mergekit_het/data/build_text_tasks.py --debs debs --out mergekit_het/data/text_tasks

The script extracts each .deb with `dpkg-deb -x` into a work folder, reads the
package version with `dpkg-deb -f`, and writes gzip-compressed CSVs with columns
`text,label` (label = integer 0..K-1; gzip header without name or time stamp).
Everything is deterministic (seed 0): identical inputs give byte-identical files.
Each task's LICENSE is its license line followed by the source package's
Debian copyright file (`usr/share/doc/PKG/copyright`) verbatim.

Common processing: whitespace (incl. newlines) collapsed to single spaces,
empty texts dropped, identical texts de-duplicated (first occurrence kept, so
no text is in two splits), stratified split with validation and test about
10% each (capped at 2000 each), train capped at 20000 (stratified subsample).
"""
import argparse
import csv
import glob
import gzip
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

SEED = 0
MAX_EVAL = 2000
MAX_TRAIN = 20000
EVAL_FRAC = 0.10


# ----------------------------------------------------------------- utilities
def clean(text):
    return " ".join(text.split())


def deb_path(debs_dir, pkg):
    hits = sorted(glob.glob(os.path.join(debs_dir, pkg + "_*.deb")))
    if not hits:
        raise FileNotFoundError("no %s_*.deb in %s" % (pkg, debs_dir))
    return hits[-1]


class Debs:
    """Extract .deb files on demand; remember package versions."""

    def __init__(self, debs_dir, work_dir):
        self.debs_dir = debs_dir
        self.work_dir = work_dir
        self.roots = {}
        self.versions = {}

    def root(self, pkg):
        if pkg not in self.roots:
            deb = deb_path(self.debs_dir, pkg)
            dest = os.path.join(self.work_dir, pkg)
            os.makedirs(dest, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
            ver = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
            self.roots[pkg] = dest
            self.versions[pkg] = ver
        return self.roots[pkg]

    def source(self, *pkgs):
        for p in pkgs:
            self.root(p)
        return ", ".join("%s %s (Debian bookworm)" % (p, self.versions[p]) for p in pkgs)


def order_key(task, text):
    return hashlib.sha256(("%d|%s|%s" % (SEED, task, text)).encode("utf-8")).hexdigest()


def dedup(rows):
    """rows: list of (text, label). Clean, drop empty, keep first of identical texts."""
    seen = set()
    out = []
    conflicts = 0
    first_label = {}
    for text, label in rows:
        text = clean(text)
        if not text:
            continue
        if text in seen:
            if first_label[text] != label:
                conflicts += 1
            continue
        seen.add(text)
        first_label[text] = label
        out.append((text, label))
    return out, conflicts


def allocate(counts, total):
    """Largest-remainder allocation of `total` over labels proportional to counts."""
    n = sum(counts.values())
    if total >= n:
        return dict(counts)
    quota = {k: c * total / n for k, c in counts.items()}
    alloc = {k: int(q) for k, q in quota.items()}
    rest = total - sum(alloc.values())
    for k in sorted(quota, key=lambda k: (-(quota[k] - alloc[k]), k))[:rest]:
        alloc[k] += 1
    return alloc


def split(task, rows):
    """Deterministic stratified split -> dict of lists of (text, label)."""
    by_label = {}
    for text, label in rows:
        by_label.setdefault(label, []).append(text)
    for label in by_label:
        by_label[label].sort(key=lambda t: order_key(task, t))
    counts = {k: len(v) for k, v in by_label.items()}
    n = len(rows)
    n_eval = min(int(round(EVAL_FRAC * n)), MAX_EVAL)
    test_n = allocate(counts, n_eval)
    rem = {k: counts[k] - test_n[k] for k in counts}
    val_n = allocate(rem, n_eval)
    pool = {k: rem[k] - val_n[k] for k in counts}
    train_n = allocate(pool, MAX_TRAIN)
    out = {"train": [], "validation": [], "test": []}
    for label, texts in by_label.items():
        a, b = test_n[label], test_n[label] + val_n[label]
        out["test"] += [(t, label) for t in texts[:a]]
        out["validation"] += [(t, label) for t in texts[a:b]]
        out["train"] += [(t, label) for t in texts[b:b + train_n[label]]]
    for s in out:
        out[s].sort(key=lambda r: order_key(task + "/" + s, r[0]))
    return out


def write_license(d, name, source, license_, copyright_file):
    """LICENSE of a task: where its texts come from, their license, the Debian copyright file."""
    with open(copyright_file, encoding="utf-8") as f:
        copyright_text = f.read()
    with open(os.path.join(d, "LICENSE"), "w", encoding="utf-8") as f:
        f.write("The texts of the task '%s' are derived from the Debian package %s.\n"
                "License: %s.\n\nThe package's copyright file (%s) follows verbatim.\n\n%s"
                % (name, source, license_, copyright_file[copyright_file.rindex("/usr/share/doc/"):],
                   copyright_text))


def write_task(out_dir, name, rows, label_names, description, source, license_, copyright_file, extra=None):
    rows, conflicts = dedup(rows)
    parts = split(name, rows)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    for s, recs in parts.items():
        with open(os.path.join(d, s + ".csv.gz"), "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                io.TextIOWrapper(gz, encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            for text, label in recs:
                w.writerow([text, label])
    write_license(d, name, source, license_, copyright_file)
    meta = {
        "name": name,
        "description": description,
        "source": source,
        "license": license_,
        "label_names": label_names,
        "num_labels": len(label_names),
        "sizes": {s: len(parts[s]) for s in ("train", "validation", "test")},
    }
    if extra:
        meta.update(extra)
    with open(os.path.join(d, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("%-20s classes=%d sizes=%s (identical texts with other label dropped: %d)"
          % (name, len(label_names), meta["sizes"], conflicts))
    return meta


# ------------------------------------------------------------------- readers
def fortune_entries(path):
    """Entries of a fortune(6) source file (UTF-8), separated by lines '%'."""
    text = open(path, "rb").read().decode("utf-8", "replace")
    return [e for e in re.split(r"\r?\n%[ \t]*\r?\n", "\n" + text + "\n") if e.strip()]


def read_r_lazyload(prefix):
    """Read an R lazy-load database (<prefix>.rdx/.rdb) -> {name: python object}."""
    import warnings
    import rdata

    def conv(raw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type", tbl_df constructors
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    with open(prefix + ".rdx", "rb") as f:
        index = conv(gzip.decompress(f.read()))
    with open(prefix + ".rdb", "rb") as f:
        db = f.read()
    out = {}
    for name, (off, length) in index["variables"].items():
        blob = db[int(off):int(off) + int(length)]
        size = struct.unpack(">I", blob[:4])[0]
        raw = zlib.decompress(blob[4:])
        assert len(raw) == size, name
        out[str(name)] = conv(raw)
    return out


# --------------------------------------------------------------------- tasks
# Standard WordNet lexicographer file names (lexnames(5WN)); 03 noun.Tops is
# excluded (51 unique-beginner synsets only).
NOUN_LEXNAMES = {
    4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event",
    12: "noun.feeling", 13: "noun.food", 14: "noun.group", 15: "noun.location",
    16: "noun.motive", 17: "noun.object", 18: "noun.person", 19: "noun.phenomenon",
    20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
}


def wordnet_synsets(root, pos):
    """Yield (lex_filenum, definition) from data.<pos>; example sentences removed."""
    path = os.path.join(root, "usr/share/wordnet", "data." + pos)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            head, gloss = line.split("|", 1)
            lex = int(head.split()[1])
            # drop quoted example sentences ("..."), then tidy separators
            definition = re.sub(r'"[^"]*"', " ", gloss)
            definition = re.sub(r"(\s*;\s*)+", "; ", definition).strip(" ;\t\n")
            if not definition:
                definition = gloss.strip()
            yield lex, definition


def build_wordnet(debs, out):
    root = debs.root("wordnet-base")
    src = debs.source("wordnet-base")
    lic = "WordNet 3.0 license (Princeton University; BSD-style, permissive)"
    copyright_file = os.path.join(root, "usr/share/doc/wordnet-base/copyright")
    label_names = [NOUN_LEXNAMES[k] for k in sorted(NOUN_LEXNAMES)]
    lab = {k: i for i, k in enumerate(sorted(NOUN_LEXNAMES))}
    rows = [(g, lab[lex]) for lex, g in wordnet_synsets(root, "noun") if lex in lab]
    write_task(out, "wordnet_supersense", rows, label_names,
               "WordNet 3.0 noun synset definition (gloss without example sentences) -> "
               "noun lexicographer file / supersense (noun.Tops excluded).", src, lic, copyright_file)

    pos_names = ["noun", "verb", "adj", "adv"]
    rows = []
    for i, pos in enumerate(pos_names):
        rows += [(g, i) for _, g in wordnet_synsets(root, pos)]
    write_task(out, "wordnet_pos", rows, pos_names,
               "WordNet 3.0 synset definition (gloss without example sentences) -> part of "
               "speech of the defined synset (satellite adjectives count as adj).", src, lic, copyright_file)


# fortune files that are catch-all collections rather than a topic
FORTUNE_CATCHALL = {"cookie", "miscellaneous", "fortunes"}
FORTUNE_MAXLEN = 600
FORTUNE_NCLASSES = 12


def build_fortune_topic(debs, out):
    root = debs.root("fortunes")
    base = os.path.join(root, "usr/share/games/fortunes")
    cats = {}
    for f in sorted(os.listdir(base)):
        p = os.path.join(base, f)
        if f.endswith((".dat", ".u8")) or not os.path.isfile(p) or os.path.islink(p):
            continue
        if f in FORTUNE_CATCHALL:
            continue
        ents = [clean(e) for e in fortune_entries(p)]
        cats[f] = [e for e in ents if 0 < len(e) <= FORTUNE_MAXLEN]
    keep = sorted(cats, key=lambda c: (-len(cats[c]), c))[:FORTUNE_NCLASSES]
    label_names = sorted(keep)
    rows = [(e, i) for i, c in enumerate(label_names) for e in cats[c]]
    write_task(out, "fortune_topic", rows, label_names,
               "English fortune-cookie text (Unix fortune(6) database) -> the fortune file "
               "(topic/category) it comes from. The %d largest files after dropping the "
               "catch-all files 'cookie' and 'miscellaneous'; entries over %d characters dropped."
               % (FORTUNE_NCLASSES, FORTUNE_MAXLEN),
               debs.source("fortunes"),
               "BSD (fortune-mod, per debian/copyright); texts are quotations collected "
               "from many sources", os.path.join(root, "usr/share/doc/fortunes/copyright"))


AUSTEN = [("sensesensibility", "Sense & Sensibility"), ("prideprejudice", "Pride & Prejudice"),
          ("mansfieldpark", "Mansfield Park"), ("emma", "Emma"),
          ("northangerabbey", "Northanger Abbey"), ("persuasion", "Persuasion")]
HEADING = re.compile(r"^(chapter|volume)\b", re.I)
MIN_WORDS = 30
MIN_TAIL = 12


def austen_passages(lines):
    """Consecutive non-empty lines joined into passages of >= 30 words, within a chapter.

    Text before the first 'Chapter' heading (title page) is skipped; heading lines
    and lines without lowercase letters (e.g. 'THE END') are skipped; a chapter's
    last chunk is kept only if it has at least 12 words.
    """
    out, cur, started = [], [], False
    nwords = 0
    for line in list(lines) + ["CHAPTER END"]:
        line = str(line).strip()
        if HEADING.match(line):
            if cur and nwords >= MIN_TAIL:
                out.append(" ".join(cur))
            cur, nwords, started = [], 0, True
            continue
        if not started or not line or not re.search("[a-z]", line):
            continue
        cur.append(line)
        nwords += len(line.split())
        if nwords >= MIN_WORDS:
            out.append(" ".join(cur))
            cur, nwords = [], 0
    return out


def build_austen(debs, out):
    root = debs.root("r-cran-janeaustenr")
    data = read_r_lazyload(os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata"))
    rows = []
    for i, (var, _) in enumerate(AUSTEN):
        rows += [(p, i) for p in austen_passages(data[var])]
    write_task(out, "austen_book", rows, [t for _, t in AUSTEN],
               "Passage (about 30-45 words: consecutive lines of the novel's text, not "
               "crossing chapters) from one of Jane Austen's six completed novels -> novel.",
               debs.source("r-cran-janeaustenr"),
               "MIT (janeaustenr R package); novel texts are public domain (Project Gutenberg)",
               os.path.join(root, "usr/share/doc/r-cran-janeaustenr/copyright"))


TASKS = {
    "wordnet": build_wordnet,
    "fortune_topic": build_fortune_topic,
    "austen_book": build_austen,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--debs", required=True, help="folder holding the downloaded .deb files")
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per task)")
    ap.add_argument("--work", default=None, help="extraction folder (default: temporary)")
    ap.add_argument("--only", nargs="*", choices=sorted(TASKS), help="build only these")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        debs = Debs(args.debs, args.work or tmp)
        for name, fn in TASKS.items():
            if args.only and name not in args.only:
                continue
            fn(debs, args.out)


if __name__ == "__main__":
    main()
