"""Held-out records that are near-copies of training records: normalised text, MinHash LSH, exact Jaccard.

Why: the exact check (`split.overlap`, by content hash) misses a test record that differs from a training
record by a greeting, a letter's case or a punctuation mark, and such a test split measures memorisation (the
demo once reported a test loss of 0.010 on near-copies of its training records). A held-out record is a
near-duplicate when the Jaccard similarity of its set of 3-word shingles and some training record's is at least
`THRESHOLD`, after both texts are normalised (Unicode NFKC, case folded, punctuation and repeated whitespace
dropped) and shingles that more than half of the training records share are left out (`BOILERPLATE_SHARE`: a
system prompt or an instruction every record repeats says nothing about which record it is; without this,
every pair of chat records with a long shared system prompt would look alike). Exact duplicates are counted by
the exact check and not again here.

How: datasketch's MinHash (128 permutations) of each training record goes into a MinHashLSH index tuned to
`THRESHOLD`; each held-out record queries it, and every candidate is confirmed with the exact Jaccard of the two
shingle sets (kept as sorted 32-bit hashes), so there are no false positives; LSH may miss a pair near the
threshold (rarely, at 128 permutations). Cost, measured as CPU time on this project's development machine:
about 2 s per 10k records of 200 characters and 3 s per 10k records of 900 characters (shingling and hashing
are linear in the text's length), and about 70 MB of memory per 10k training records at its peak (the LSH index
and the shingles' hashes); so 100k chat records take about half a minute and under 1 GB of the CPU Validating
pod (4 GiB by default), before any GPU is asked for.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xxhash import xxh32_intdigest

from finetune_trainer.data.split import content_hash

SHINGLE = 3
"""Words per shingle: a changed word changes the three shingles that hold it, so one-word variants of a short
record (`what is one and two` / `what is one and three`) are not near-copies, while a greeting added to a
question leaves most of its shingles as they were."""
THRESHOLD = 0.7
"""Jaccard similarity of the shingle sets from which two records count as near-duplicates. Calibrated on the
demo's data: its first version (a greeting added to one of four phrasings of six questions) has 29 of its 32
test records at 0.7 or above (8 at 0.8); its rewrite, with paraphrased held-out questions whose answers are
in training, has none; a question with "Hello there." added scores 0.78 against itself."""
NUM_PERM = 128
BOILERPLATE_SHARE = 0.5
"""A shingle in more than this share of the training records is left out of the comparison."""

_NOT_WORD = re.compile(r"[\W_]+")


def text_of(example: Any) -> str:
    """Every string of a normalised example, in order; JSON inside a string (a conversation) is read too."""
    if isinstance(example, str):
        stripped = example.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return text_of(json.loads(example))
            except ValueError:
                pass
        return example
    if isinstance(example, Mapping):
        return " ".join(text_of(value) for value in example.values())
    if isinstance(example, list | tuple):
        return " ".join(text_of(value) for value in example)
    return ""


def normalise(text: str) -> str:
    """Case, Unicode forms, punctuation and spacing removed: `Hello,  WORLD!` -> `hello world`."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str) -> set[str]:
    """The `SHINGLE`-word runs of a normalised text (the text itself when it has fewer words)."""
    words = text.split()
    if len(words) <= SHINGLE:
        return {text} if text else set()
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def hashed(example: Any) -> np.ndarray:
    """An example's shingles as sorted unique 32-bit hashes (xxh32): 4 bytes each in memory, not a string."""
    found = shingles(normalise(text_of(example)))
    return np.unique(np.fromiter((xxh32_intdigest(s.encode()) for s in found), dtype=np.uint32, count=len(found)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity of two sorted unique hash arrays."""
    shared = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - shared
    return shared / union if union else 0.0


@dataclass(frozen=True)
class Pair:
    """A held-out record (its index in its split), the training record it nearly copies, and how similar."""

    held_out: int
    train: int
    similarity: float


def near_pairs(examples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[Pair]]:
    """For validation and test: their records that nearly copy a training record, and which one (exact copies
    are left out: `split.overlap` counts them)."""
    from datasketch import MinHash, MinHashLSH

    exact = {content_hash(e) for e in examples.get("train", [])}
    train = [hashed(e) for e in examples.get("train", [])]
    common = np.empty(0, dtype=np.uint32)
    if len(train) > 1:
        values, counts = np.unique(np.concatenate(train), return_counts=True)
        common = values[counts > BOILERPLATE_SHARE * len(train)]
    kept = [found[~np.isin(found, common, assume_unique=True)] for found in train]

    def signatures(many: Sequence[np.ndarray]) -> Iterator[MinHash]:
        """One MinHash per hash array, made as they are used (the hashes are the values: `hashfunc=int`)."""
        yield from MinHash.generator((found.tolist() for found in many), num_perm=NUM_PERM, hashfunc=int)

    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    with index.insertion_session() as session:
        for position, (found, minhash) in enumerate(zip(kept, signatures(kept), strict=True)):
            if found.size:
                session.insert(position, minhash)
    pairs: dict[str, list[Pair]] = {}
    for name in ("validation", "test"):
        pairs[name] = []
        held = examples.get(name, [])
        found_sets = [found[~np.isin(found, common, assume_unique=True)] for found in map(hashed, held)]
        for position, (example, found, minhash) in enumerate(
            zip(held, found_sets, signatures(found_sets), strict=True)
        ):
            if not found.size or content_hash(example) in exact:
                continue
            best = max(((jaccard(found, kept[c]), c) for c in index.query(minhash)), default=(0.0, -1))
            if best[0] >= THRESHOLD:
                pairs[name].append(Pair(position, best[1], round(best[0], 3)))
    return pairs
