#!/usr/bin/env python3
"""Build the built-in ``debian-descriptions`` dataset from Debian's apt index.

Source: the ``main`` component of Debian bookworm as apt stores it on this machine
(``/var/lib/apt/lists``): the binary ``Packages`` index (package name, Source, Section,
Description-md5) joined with the English ``Translation-en`` index (synopsis and long
description) by package name and Description-md5.  Run::

    apt-get update -o Acquire::Languages=en && python scripts/build_debian_dataset.py

The lists are decompressed with ``/usr/lib/apt/apt-helper cat-file`` so any compression
apt uses works.  The output is deterministic: the same input lists give byte-identical files.

Splits are grouped (version 2): binary packages of one source package, packages whose long
descriptions are near-duplicates (MinHash, Jaccard >= 0.8 on word 3-grams, tuneloop's own
``tuneloop.data.dedup``) and packages with the same synopsis form one group, and a whole group
goes to one split, so no test row has a sibling in train.

Output (``data/debian-descriptions/``): ``train.jsonl``, ``validation.jsonl``,
``test.jsonl`` (keys ``package, source, section, synopsis, description``) and
``tasks.json`` (split sizes, the two task definitions, the source-package leakage
measurement and the sha256 of each data file).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from tuneloop.data.dedup import UnionFind, near_clusters

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "data" / "debian-descriptions"
DEFAULT_SUITES = ("bookworm", "bookworm-updates", "bookworm-security")
APT_HELPER = "/usr/lib/apt/apt-helper"
SPLITS = ("train", "validation", "test")
COLUMNS = ("package", "source", "section", "synopsis", "description")
SPLIT_SALT = "tuneloop-split:"
NEAR_THRESHOLD = 0.8
MIN_DESCRIPTION_CHARS = 80
MAX_DESCRIPTION_CHARS = 1500
MIN_SYNOPSIS_CHARS = 10
DUMMY_RE = re.compile(r"transitional|dummy", re.IGNORECASE)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- reading the lists


def find_list_files(lists_dir: Path, suite: str, component: str, kind: str) -> list[Path]:
    """List files of one suite/component, e.g. ``..._dists_bookworm_main_binary-amd64_Packages.lz4``."""
    pattern = re.compile(
        rf"_dists_{re.escape(suite)}_{re.escape(component)}_{re.escape(kind)}(\.(lz4|gz|xz|bz2|zst|lzma))?$"
    )
    return sorted(p for p in lists_dir.iterdir() if p.is_file() and pattern.search(p.name))


def read_list(path: Path) -> str:
    """Decompress an apt list file with apt-helper (handles every compression apt uses)."""
    proc = subprocess.run([APT_HELPER, "cat-file", str(path)], capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"apt-helper cat-file {path} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8")


def parse_stanzas(text: str):
    """Yield deb822 stanzas as dicts of field -> list of raw lines (first line is the value after ':')."""
    stanza: dict[str, list[str]] = {}
    field = None
    for line in text.split("\n"):
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, None
        elif line[0] in " \t":
            if field is not None:
                stanza[field].append(line)
        else:
            key, _, value = line.partition(":")
            field = key.strip()
            stanza[field] = [value.strip()]
    if stanza:
        yield stanza


def first(stanza: dict[str, list[str]], field: str) -> str | None:
    lines = stanza.get(field)
    return lines[0] if lines else None


# --------------------------------------------------------------------------- building rows


def long_description(lines: list[str]) -> str:
    """Continuation lines of a Description field -> plain text.

    The leading single space is removed, a line that is just " ." becomes an empty line
    (paragraph break), trailing whitespace is dropped, and the result is stripped.
    """
    out = []
    for line in lines:
        body = line[1:] if line[:1] in (" ", "\t") else line
        out.append("" if body.strip() == "." else body.rstrip())
    return "\n".join(out).strip()


def description_md5(lines: list[str]) -> str:
    """Debian's Description-md5: md5 of the whole Description field value plus a final newline."""
    return hashlib.md5(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


def split_hash(package: str) -> int:
    return int(hashlib.sha256((SPLIT_SALT + package).encode("utf-8")).hexdigest(), 16)


def groups(pool: list[dict[str, str]]) -> dict[str, str]:
    """Package -> group name: one source package, near-duplicate descriptions and equal synopses are one group."""
    names = sorted({r["package"] for r in pool})
    index = {name: i for i, name in enumerate(names)}
    uf = UnionFind(len(names))  # the smallest index, i.e. the name that sorts first, names the group
    first_of: dict[tuple[str, str], str] = {}
    for r in pool:
        for key in (("source", r["source"]), ("synopsis", normalise(r["synopsis"]))):
            if key in first_of:
                uf.union(index[first_of[key]], index[r["package"]])
            else:
                first_of[key] = r["package"]
    log(f"near-duplicate descriptions (Jaccard >= {NEAR_THRESHOLD}) over {len(pool)} rows ...")
    clusters = near_clusters([r["description"] for r in pool], NEAR_THRESHOLD)
    for c in clusters:
        for i in c[1:]:
            uf.union(index[pool[c[0]]["package"]], index[pool[i]["package"]])
    out = {r["package"]: names[uf.find(index[r["package"]])] for r in pool}
    log(f"  {len(clusters)} near-duplicate clusters; {len(set(out.values()))} groups of {len(pool)} packages")
    return out


def split_of(h: int) -> str:
    bucket = h % 100
    if bucket < 80:
        return "train"
    if bucket < 90:
        return "validation"
    return "test"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def load_packages(lists_dir: Path, suites: list[str], arch: str) -> dict[str, dict[str, str]]:
    """Package name -> fields; the package set is the first suite's, later suites override fields."""
    packages: dict[str, dict[str, str]] = {}
    for i, suite in enumerate(suites):
        files = find_list_files(lists_dir, suite, "main", f"binary-{arch}_Packages")
        if not files:
            if i == 0:
                raise SystemExit(f"no Packages index for suite {suite!r} in {lists_dir}; run apt-get update")
            log(f"  {suite}: no Packages index, skipped")
            continue
        for path in files:
            stanzas = overridden = new = 0
            for st in parse_stanzas(read_list(path)):
                name = first(st, "Package")
                if not name:
                    continue
                stanzas += 1
                record = {
                    "package": name,
                    "source": first(st, "Source") or "",
                    "section": first(st, "Section") or "",
                    "md5": first(st, "Description-md5") or "",
                    "synopsis_packages": first(st, "Description") or "",
                    "suite": suite,
                }
                if i == 0:
                    # within one index a repeated name keeps its last stanza (file order is deterministic)
                    packages[name] = record
                elif name in packages:
                    packages[name] = record
                    overridden += 1
                else:
                    new += 1
            if i == 0:
                log(f"  {suite}: {stanzas} stanzas, {len(packages)} distinct packages  [{path.name}]")
            else:
                log(
                    f"  {suite}: {stanzas} stanzas, {overridden} override {suites[0]} packages, "
                    f"{new} not in {suites[0]} (ignored)  [{path.name}]"
                )
    return packages


def load_translations(lists_dir: Path, suites: list[str]) -> dict[tuple[str, str], list[str]]:
    """(package, Description-md5) -> Description-en lines, from every suite's Translation-en."""
    translations: dict[tuple[str, str], list[str]] = {}
    for suite in suites:
        files = find_list_files(lists_dir, suite, "main", "i18n_Translation-en")
        if not files:
            log(f"  {suite}: no Translation-en index, skipped")
            continue
        for path in files:
            n = 0
            for st in parse_stanzas(read_list(path)):
                name, md5, desc = first(st, "Package"), first(st, "Description-md5"), st.get("Description-en")
                if name and md5 and desc:
                    translations[(name, md5)] = desc
                    n += 1
            log(f"  {suite}: {n} English descriptions  [{path.name}]")
    return translations


def build_pool(packages: dict[str, dict[str, str]], translations) -> list[dict[str, str]]:
    drops: collections.Counter[str] = collections.Counter()
    md5_mismatch = 0
    rows = []
    for name in sorted(packages):
        rec = packages[name]
        desc_lines = translations.get((name, rec["md5"]))
        if desc_lines is None:
            drops["no Translation-en entry for (package, Description-md5)"] += 1
            continue
        if description_md5(desc_lines) != rec["md5"]:
            md5_mismatch += 1
        if not rec["section"]:
            drops["no Section"] += 1
            continue
        synopsis = desc_lines[0].strip()
        description = long_description(desc_lines[1:])
        if not description:
            drops["empty long description"] += 1
        elif len(description) < MIN_DESCRIPTION_CHARS:
            drops[f"long description < {MIN_DESCRIPTION_CHARS} chars"] += 1
        elif len(description) > MAX_DESCRIPTION_CHARS:
            drops[f"long description > {MAX_DESCRIPTION_CHARS} chars"] += 1
        elif len(synopsis) < MIN_SYNOPSIS_CHARS:
            drops[f"synopsis < {MIN_SYNOPSIS_CHARS} chars"] += 1
        elif DUMMY_RE.search(synopsis):
            drops["transitional/dummy package"] += 1
        else:
            source = re.sub(r"\s*\(.*\)\s*$", "", rec["source"]).strip() or name
            rows.append(
                {
                    "package": name,
                    "source": source,
                    "section": rec["section"].rsplit("/", 1)[-1],
                    "synopsis": synopsis,
                    "description": description,
                }
            )
    log(f"joined and filtered: {len(rows)} kept of {len(packages)}")
    for reason, n in sorted(drops.items()):
        log(f"  dropped {n:6d}: {reason}")
    log(f"  Description-md5 check: {md5_mismatch} joined descriptions do not hash to their md5")
    return rows


def deduplicate(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Keep one package (the first by name) per normalised long description."""
    seen: dict[str, str] = {}
    kept = []
    for row in sorted(rows, key=lambda r: r["package"]):
        key = normalise(row["description"])
        if key in seen:
            continue
        seen[key] = row["package"]
        kept.append(row)
    log(f"de-duplicated descriptions: {len(kept)} kept, {len(rows) - len(kept)} dropped as duplicates")
    return kept


# --------------------------------------------------------------------------- writing


def measure_leakage(out_rows: dict[str, list[dict[str, str]]]) -> dict:
    """Rows of validation/test with a relative in train: same source package, a near-duplicate description
    (Jaccard >= 0.8), or the same synopsis. Grouped splits make all three zero; the build checks it."""
    from tuneloop.data.dedup import cross_matches

    train = out_rows["train"]
    sources = {r["source"] for r in train}
    synopses = {normalise(r["synopsis"]) for r in train}
    leakage: dict = {
        "grouped_by": "source package + near-duplicate descriptions + equal synopsis",
        "near_threshold": NEAR_THRESHOLD,
        "before_grouping": {
            "note": "version 1 split per binary package, measured on its shipped files",
            "validation": {"same_source": 85, "near_description": 30, "same_synopsis": 0, "any": 93},
            "test": {"same_source": 89, "near_description": 34, "same_synopsis": 3, "any": 97},
        },
    }
    train_desc = [r["description"] for r in train]
    for s in ("validation", "test"):
        rows = out_rows[s]
        counts = {
            "same_source": sum(r["source"] in sources for r in rows),
            "near_description": len(cross_matches([r["description"] for r in rows], train_desc, NEAR_THRESHOLD)),
            "same_synopsis": sum(normalise(r["synopsis"]) in synopses for r in rows),
        }
        leakage[s] = counts
        log(f"leakage {s}: {counts}")
        if any(counts.values()):
            raise SystemExit(f"grouped split still leaks into {s}: {counts}")
    return leakage


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> str:
    data = "".join(
        json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False, sort_keys=False) + "\n" for row in rows
    ).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists-dir", type=Path, default=Path("/var/lib/apt/lists"))
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="default: %(default)s")
    ap.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES), help="first is the base suite")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--validation", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--top-sections", type=int, default=8)
    ap.add_argument(
        "--pool",
        type=Path,
        help="also write every filtered row (before de-duplication) as JSONL, e.g. for scripts/bench_data.py",
    )
    args = ap.parse_args(argv)
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}

    log(f"reading Packages indexes from {args.lists_dir}")
    packages = load_packages(args.lists_dir, args.suites, args.arch)
    log("reading Translation-en indexes")
    translations = load_translations(args.lists_dir, args.suites)

    filtered = build_pool(packages, translations)
    if args.pool:
        write_jsonl(args.pool, filtered)
        log(f"wrote the full pool: {args.pool} ({len(filtered)} rows)")
    pool = deduplicate(filtered)

    # top sections over the whole de-duplicated pool (before subsampling), ties broken by name
    section_counts = collections.Counter(r["section"] for r in pool)
    top = sorted(section_counts.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top_sections]
    labels = sorted(s for s, _ in top)
    covered = sum(n for _, n in top)
    log(f"{len(section_counts)} sections; top {args.top_sections} cover {covered}/{len(pool)} rows:")
    for s, n in top:
        log(f"  {s:14s} {n}")

    # deterministic split by hash of the group name: a group never straddles two splits
    group_of = groups(pool)
    by_split: dict[str, list[tuple[int, str, dict[str, str]]]] = {s: [] for s in SPLITS}
    for row in pool:
        h = split_hash(group_of[row["package"]])
        by_split[split_of(h)].append((h, row["package"], row))
    out_rows: dict[str, list[dict[str, str]]] = {}
    for s in SPLITS:
        ordered = [row for _, _, row in sorted(by_split[s], key=lambda t: t[:2])]
        kept = ordered[: sizes[s]]
        if len(kept) < sizes[s]:
            log(f"  warning: {s} pool has only {len(ordered)} rows (asked for {sizes[s]})")
        out_rows[s] = sorted(kept, key=lambda r: r["package"])
        log(f"split {s}: pool {len(ordered)} -> kept {len(kept)}")

    # sanity: no description in two splits (guaranteed by de-duplication)
    owners: dict[str, str] = {}
    for s in SPLITS:
        for r in out_rows[s]:
            key = normalise(r["description"])
            if owners.setdefault(key, s) != s:
                raise SystemExit(f"description of {r['package']} appears in {owners[key]} and {s}")

    leakage = measure_leakage(out_rows)

    args.output.mkdir(parents=True, exist_ok=True)
    digests = {}
    for s in SPLITS:
        path = args.output / f"{s}.jsonl"
        digests[path.name] = write_jsonl(path, out_rows[s])
        log(f"wrote {path} ({len(out_rows[s])} rows, {path.stat().st_size} bytes)")

    tasks = {
        "name": "debian-descriptions",
        "version": 2,
        "source": "Debian bookworm (main) Packages and Translation-en indexes",
        "splits": {s: len(out_rows[s]) for s in SPLITS},
        "columns": list(COLUMNS),
        "tasks": {
            "synopsis": {"kind": "generation", "input": "description", "target": "synopsis"},
            "section": {
                "kind": "classification",
                "input": "description",
                "target": "section",
                "labels": labels,
                "rows": {s: sum(r["section"] in labels for r in out_rows[s]) for s in SPLITS},
            },
        },
        "leakage": leakage,
        "sha256": digests,
    }
    tasks_path = args.output / "tasks.json"
    tasks_path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {tasks_path}")
    for s in SPLITS:
        counts = collections.Counter(r["section"] for r in out_rows[s] if r["section"] in labels)
        log(f"  {s} section counts: " + ", ".join(f"{lab}={counts[lab]}" for lab in labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
