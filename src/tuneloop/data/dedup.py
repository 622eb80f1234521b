"""Exact and near-duplicate detection: normalised-text hashes and MinHash LSH (datasketch).

Near-duplicates are pairs whose sets of word n-grams have a Jaccard similarity at or above a threshold. LSH finds
candidate pairs; each candidate is then confirmed with the MinHash estimate of its Jaccard similarity, so the
reported pairs are the ones datasketch estimates above the threshold (tests measure recall and false positives
against exact Jaccard on planted pairs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: what counts as the same text for exact duplicates."""
    return " ".join(text.lower().split())


def exact_key(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode(), digest_size=12).hexdigest()


def shingles(text: str, ngram: int = 3) -> set[str]:
    """Word n-grams of the lower-cased text (the whole text when it is shorter than n words)."""
    words = WORD.findall(text.lower())
    if len(words) < ngram:
        return {" ".join(words)}
    return {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: str, b: str, ngram: int = 3) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for checks and reports, not for search)."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


@dataclass
class Signatures:
    """MinHash signatures of a list of texts, in order."""

    minhashes: list[Any]
    ngram: int
    num_perm: int


def signatures(texts: Sequence[str], ngram: int = 3, num_perm: int = 128, seed: int = 1) -> Signatures:
    from datasketch import MinHash

    sets = [[s.encode() for s in shingles(t, ngram)] for t in texts]
    return Signatures(MinHash.bulk(sets, num_perm=num_perm, seed=seed), ngram, num_perm)


class UnionFind:
    """Disjoint sets over 0..n-1; the smallest index represents its set (so sorted keys name groups stably)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest row represents its cluster


def exact_clusters(texts: Sequence[str]) -> list[list[int]]:
    """Groups of two or more rows with the same normalised text, each sorted, ordered by first row."""
    by_key: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        by_key.setdefault(exact_key(t), []).append(i)
    return [g for g in by_key.values() if len(g) > 1]


def near_clusters(
    texts: Sequence[str], threshold: float = 0.8, ngram: int = 3, num_perm: int = 128, sigs: Signatures | None = None
) -> list[list[int]]:
    """Connected components of near-duplicate pairs (exact copies included), each sorted, ordered by first row.

    Components are transitive: A~B and B~C put A, B, C in one cluster even when A and C are further apart,
    which is what deduplication and grouped splitting want (one family of near-copies, one representative)."""
    from datasketch import MinHashLSH

    n = len(texts)
    uf = UnionFind(n)
    for group in exact_clusters(texts):
        for i in group[1:]:
            uf.union(group[0], i)
    sigs = sigs or signatures(texts, ngram, num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=sigs.num_perm)
    for i, m in enumerate(sigs.minhashes):
        for j in lsh.query(m):
            if uf.find(i) != uf.find(j) and m.jaccard(sigs.minhashes[j]) >= threshold:
                uf.union(i, j)
        lsh.insert(i, m)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def cross_matches(
    rows: Sequence[str], references: Sequence[str], threshold: float = 0.8, ngram: int = 3, num_perm: int = 128
) -> dict[int, tuple[int, float]]:
    """Row index -> (index of the most similar reference, estimated Jaccard) for every row that is an exact or
    near copy of some reference text."""
    from datasketch import MinHashLSH

    found: dict[int, tuple[int, float]] = {}
    ref_keys = {exact_key(t): j for j, t in reversed(list(enumerate(references)))}
    for i, t in enumerate(rows):
        j = ref_keys.get(exact_key(t))
        if j is not None:
            found[i] = (j, 1.0)
    if not references or not rows:
        return found
    ref_sigs = signatures(references, ngram, num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for j, m in enumerate(ref_sigs.minhashes):
        lsh.insert(j, m)
    row_sigs = signatures(rows, ngram, num_perm)
    for i, m in enumerate(row_sigs.minhashes):
        if i in found:
            continue
        best = max(((m.jaccard(ref_sigs.minhashes[j]), j) for j in lsh.query(m)), default=None)
        if best is not None and best[0] >= threshold:
            found[i] = (best[1], best[0])
    return found
