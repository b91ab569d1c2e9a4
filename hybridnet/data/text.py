"""Parallel text corpora for sequence-to-sequence models: loading, a subword tokenizer,
an embedded synthetic language pair, bucketing and load-balanced multi-device batches.

The pieces, each small and usable alone:

* :func:`read_parallel` reads two plain-text files (one sentence per line) and refuses
  bytes that are not UTF-8 (naming the file and line) and files of different line
  counts (naming both files and both counts).
* :class:`SubwordTokenizer` trains a sentencepiece model on the corpus itself (no
  download); ids 0-3 are ``<pad>``, ``<unk>``, ``<s>``, ``</s>``.
* :func:`synthetic_pair` / :func:`embedded_corpus`: a deterministic synthetic language
  pair from a small grammar with reordering (SVO -> SOV, adjectives after nouns, the
  prepositional phrase before the object) and agreement (determiners and adjectives agree
  with the noun's gender and number, the verb with the subject's number).
* :func:`encode_pairs` turns sentence pairs into id lists, dropping empty and too-long
  pairs and counting each kind.
* :class:`BucketedBatches` hands out ``([source, target_in], target_out)`` batches,
  bucketed by length; with ``shards > 1`` and ``balanced=True`` every data-parallel shard
  draws its part of the global batch from the same bucket (Kalamkar et al., CLUSTER 2019)
  and the global batch is dealt to shards by length, so shards hold similar token counts.
  It is a source for ``model.fit`` through the adapter protocol (``as_data_adapter``).

Example:
    >>> train, test = embedded_corpus()
    >>> tok = SubwordTokenizer.train(train.source + train.target, vocab_size=256)
    >>> pairs = encode_pairs(tok, train.source, train.target, max_length=48)
    >>> batches = BucketedBatches(pairs.source, pairs.target, batch_size=64, shards=8)
    >>> model.fit(batches, epochs=2)
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterator, Sequence

import numpy as np

from hybridnet.data.adapters import DataAdapter

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

__all__ = ["PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "ParallelText", "read_parallel",
           "write_parallel", "synthetic_pair", "embedded_corpus", "SubwordTokenizer",
           "EncodedPairs", "encode_pairs", "BucketedBatches", "BucketedBatchesAdapter",
           "batch_statistics"]


# ------------------------------------------------------------------------ plain text

@dataclasses.dataclass(frozen=True)
class ParallelText:
    """Aligned sentences: ``source[i]`` translates to ``target[i]``."""
    source: list
    target: list

    def __len__(self) -> int:
        return len(self.source)


def _read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file without line ends; a clear error at bad bytes."""
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}: line {number} is not valid UTF-8 ({e.reason} at byte {e.start} "
                    f"of the line: {raw[max(0, e.start - 8):e.start + 8]!r}). Expected a "
                    f"UTF-8 text file with one sentence per line.") from None
            lines.append(text.rstrip("\r\n"))
    return lines


def read_parallel(source_path: str, target_path: str) -> ParallelText:
    """Reads a parallel corpus stored as two plain-text files, one sentence per line.

    Raises:
        ValueError: a file holds bytes that are not UTF-8 (names the file and line), or
            the files have different line counts (names both files and both counts).

    Example:
        >>> text = read_parallel("train.de", "train.en")
    """
    source, target = _read_lines(source_path), _read_lines(target_path)
    if len(source) != len(target):
        raise ValueError(
            f"A parallel corpus needs one target line per source line. Received: "
            f"{source_path} has {len(source)} lines, {target_path} has {len(target)} lines.")
    return ParallelText(source, target)


def write_parallel(text: ParallelText, source_path: str, target_path: str) -> None:
    """Writes ``text`` as two UTF-8 files, one sentence per line (see :func:`read_parallel`)."""
    for path, lines in ((source_path, text.source), (target_path, text.target)):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)


# ------------------------------------------------------------------ synthetic language

# English-like source words -> target stems. Nouns carry a gender in the target.
_NOUNS = {"cat": ("miru", "f"), "dog": ("kalo", "m"), "bird": ("tavi", "f"),
          "horse": ("borun", "m"), "child": ("neka", "f"), "farmer": ("gesto", "m"),
          "teacher": ("lumira", "f"), "king": ("radon", "m"), "river": ("sulen", "f"),
          "tree": ("baro", "m"), "house": ("dimra", "f"), "wolf": ("vulko", "m")}
_ADJECTIVES = {"big": "grand", "small": "pik", "red": "rub", "old": "vek", "young": "nov",
               "happy": "fel"}
_VERBS = {"see": "vid", "like": "am", "follow": "sek", "carry": "port", "find": "trov",
          "help": "jut"}
_PREPOSITIONS = {"with": "kun", "near": "apud", "under": "sub"}
# Target determiners by (definite, gender, number).
_DETERMINERS = {(True, "m", "sg"): "lo", (True, "f", "sg"): "la", (True, "m", "pl"): "los",
                (True, "f", "pl"): "las", (False, "m", "sg"): "un", (False, "f", "sg"): "una",
                (False, "m", "pl"): "unos", (False, "f", "pl"): "unas"}
_ADJ_ENDING = {("m", "sg"): "o", ("f", "sg"): "a", ("m", "pl"): "oj", ("f", "pl"): "aj"}


def _noun_phrase(rng: np.random.Generator):
    """(source words, target words, number) of one noun phrase."""
    noun = list(_NOUNS)[rng.integers(len(_NOUNS))]
    stem, gender = _NOUNS[noun]
    number = "pl" if rng.random() < 0.4 else "sg"
    definite = bool(rng.random() < 0.6)
    adjectives = [list(_ADJECTIVES)[i] for i in
                  rng.choice(len(_ADJECTIVES),
                             size=int(rng.random() < 0.35) + int(rng.random() < 0.1),
                             replace=False)]
    source_det = "the" if definite else ("a" if number == "sg" else "some")
    source = [source_det, *adjectives, noun + ("s" if number == "pl" else "")]
    ending = _ADJ_ENDING[(gender, number)]
    # Target: determiner, noun (plural -i), adjectives after the noun in reverse order.
    target = [_DETERMINERS[(definite, gender, number)],
              stem + ("i" if number == "pl" else ""),
              *(_ADJECTIVES[a] + ending for a in reversed(adjectives))]
    return source, target, number


def _clause(rng: np.random.Generator):
    subject, subject_t, number = _noun_phrase(rng)
    obj, obj_t, _ = _noun_phrase(rng)
    verb = list(_VERBS)[rng.integers(len(_VERBS))]
    source = subject + [verb + ("s" if number == "sg" else "")] + obj
    target_verb = _VERBS[verb] + ("et" if number == "sg" else "ent")
    pp, pp_t = [], []
    if rng.random() < 0.3:
        prep = list(_PREPOSITIONS)[rng.integers(len(_PREPOSITIONS))]
        np_s, np_t, _ = _noun_phrase(rng)
        pp, pp_t = [prep] + np_s, np_t + [_PREPOSITIONS[prep]]  # a postposition
    # Target order: subject, PP, object (marked with "ka"), verb last.
    return source + pp, subject_t + pp_t + obj_t + ["ka", target_verb]


def synthetic_pair(rng: np.random.Generator) -> tuple[str, str]:
    """One sentence pair of the synthetic language: one to three clauses joined by
    "and" (target "e"), each reordered SVO -> S PP O V with agreement.

    Example:
        >>> synthetic_pair(np.random.default_rng(0))
        ('the small cat sees a dog', 'la miru pika kalo ka videt')
    """
    clauses = 1 + int(rng.random() < 0.25) + int(rng.random() < 0.05)
    source, target = [], []
    for i in range(clauses):
        s, t = _clause(rng)
        if i:
            source.append("and")
            target.append("e")
        source += s
        target += t
    return " ".join(source), " ".join(target)


def embedded_corpus(train_size: int = 20000, test_size: int = 500,
                    seed: int = 0) -> tuple[ParallelText, ParallelText]:
    """The embedded default corpus: ``(train, test)`` pairs of the synthetic language,
    deterministic in ``seed``; test sentences never occur in train.

    Example:
        >>> train, test = embedded_corpus(2000, 100)
        >>> len(train), len(test)
        (2000, 100)
    """
    for name, value in (("train_size", train_size), ("test_size", test_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"embedded_corpus: `{name}` must be a positive int. "
                             f"Received: {name}={value!r}")
    rng = np.random.default_rng(seed)
    seen, pairs = set(), []
    while len(pairs) < train_size + test_size:
        pair = synthetic_pair(rng)
        if pair[0] not in seen:
            seen.add(pair[0])
            pairs.append(pair)
    train, test = pairs[:train_size], pairs[train_size:]
    return (ParallelText([s for s, _ in train], [t for _, t in train]),
            ParallelText([s for s, _ in test], [t for _, t in test]))


# ------------------------------------------------------------------------- tokenizer

class SubwordTokenizer:
    """A sentencepiece subword model trained locally; ids 0-3 are ``<pad>``, ``<unk>``,
    ``<s>``, ``</s>`` (:data:`PAD_ID`, :data:`UNK_ID`, :data:`BOS_ID`, :data:`EOS_ID`).

    Pieces never seen in training map to ``<unk>``. The model is kept as sentencepiece's
    own serialized protobuf (:attr:`model_proto`), which :meth:`save` writes to a file.

    Example:
        >>> tok = SubwordTokenizer.train(["a b c", "b c d"], vocab_size=32)
        >>> tok.decode(tok.encode("a b c"))
        'a b c'
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"SubwordTokenizer: the model must use pad, unk, bos, eos ids "
                             f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}. Received: {ids}")

    @classmethod
    def train(cls, sentences: Sequence[str], vocab_size: int = 512,
              model_type: str = "unigram", character_coverage: float = 1.0,
              seed_sentences: int = 200000) -> "SubwordTokenizer":
        """Trains on ``sentences`` (for a translation pair: both sides, one joint
        vocabulary). ``vocab_size`` is an upper bound: a small corpus gets fewer pieces.

        Example:
            >>> tok = SubwordTokenizer.train(train.source + train.target, vocab_size=256)
        """
        import sentencepiece as spm
        if not isinstance(vocab_size, int) or vocab_size < 8:
            raise ValueError(f"SubwordTokenizer.train: `vocab_size` must be an int >= 8. "
                             f"Received: vocab_size={vocab_size!r}")
        lines = [s for s in sentences if s.strip()]
        if not lines:
            raise ValueError("SubwordTokenizer.train: no non-empty sentence to train on. "
                             f"Received: {len(sentences)} sentences")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False, num_threads=1, input_sentence_size=seed_sentences,
            shuffle_input_sentence=False, minloglevel=2)
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str) -> "SubwordTokenizer":
        with open(path, "rb") as f:
            return cls(f.read())

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Piece ids of one sentence (no ``<s>`` / ``</s>``)."""
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(list(texts))]

    def decode(self, ids) -> str:
        """Text of piece ids; stops at the first ``</s>``, skips ``<pad>`` / ``<s>`` and
        reads ids past the vocabulary (a model's padded vocabulary) as ``<unk>``."""
        out, size = [], self.vocab_size
        for i in (int(i) for i in ids):
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(i if 0 <= i < size else UNK_ID)
        return self._sp.decode(out)

    def __repr__(self):
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"


@dataclasses.dataclass(frozen=True)
class EncodedPairs:
    """Id lists of the kept pairs (source with ``</s>``, target without ``<s>`` /
    ``</s>``), which corpus lines they came from, and how many were dropped and why."""
    source: list
    target: list
    lines: np.ndarray
    dropped_empty: int
    dropped_too_long: int

    def __len__(self) -> int:
        return len(self.source)


def encode_pairs(tokenizer: SubwordTokenizer, source: Sequence[str], target: Sequence[str],
                 max_length: int = 50) -> EncodedPairs:
    """Tokenizes aligned sentences, dropping pairs with an empty side and pairs longer than
    ``max_length`` tokens on either side (counting the ``</s>`` each side gets in
    training); both are counted, never an error.

    Example:
        >>> pairs = encode_pairs(tok, ["a b", ""], ["b a", "c"], max_length=8)
        >>> len(pairs), pairs.dropped_empty
        (1, 1)
    """
    if len(source) != len(target):
        raise ValueError(f"encode_pairs: `source` and `target` must be aligned. Received: "
                         f"{len(source)} source and {len(target)} target sentences")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"encode_pairs: `max_length` must be an int >= 2. "
                         f"Received: max_length={max_length!r}")
    src_ids = tokenizer.encode_batch(source)
    tgt_ids = tokenizer.encode_batch(target)
    keep_s, keep_t, lines, empty, too_long = [], [], [], 0, 0
    for i, (s, t, s_ids, t_ids) in enumerate(zip(source, target, src_ids, tgt_ids)):
        if not s.strip() or not t.strip() or not s_ids or not t_ids:
            empty += 1
        elif len(s_ids) + 1 > max_length or len(t_ids) + 1 > max_length:
            too_long += 1
        else:
            keep_s.append(s_ids + [EOS_ID])
            keep_t.append(t_ids)
            lines.append(i)
    return EncodedPairs(keep_s, keep_t, np.asarray(lines, np.int64), empty, too_long)


# --------------------------------------------------------------------------- batching

def _round_up(n: int, width: int) -> int:
    return -(-n // width) * width


def _pad(rows: Sequence[Sequence[int]], length: int, count: int) -> np.ndarray:
    """``count`` x ``length`` int32 ids, rows left-aligned; rows past ``len(rows)`` empty."""
    out = np.zeros((count, length), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class BucketedBatches:
    """Batches of sentence pairs for teacher forcing, grouped by length.

    A pair of ``source`` ids and ``target`` ids becomes ``x = [source, [<s>] + target]``,
    ``y = target + [</s>]`` padded with 0. Pairs fall into buckets by
    ``max(len(source), len(target) + 1)`` rounded up to ``bucket_width``; each side of a
    batch is padded to its longest sentence rounded up to ``bucket_width``, so a bucket
    has few batch shapes (one compiled program each), and a bucket's last, partial batch
    is filled with empty rows (all padding: masked out of the loss), so every sentence is
    used exactly once per epoch and every batch has ``batch_size`` rows.

    With ``shards = n`` data-parallel devices the global batch is ``n`` contiguous
    parts of ``batch_size / n`` rows:

    * ``balanced=True`` (Kalamkar et al.): every part comes from the same bucket, and the
      batch's pairs are dealt to the parts in order of length (a snake draft), so the
      parts hold similar token counts;
    * ``balanced=False`` (the naive scheme it replaces): each shard buckets its own pairs
      and draws its own batches, so one step's parts come from different buckets and the
      global batch is padded to the longest of them.

    ``bucket_width=None`` turns bucketing off (random batches padded to their longest
    pair, rounded to 8): the naive single-device baseline.

    Args:
        source, target: id lists (see :func:`encode_pairs`).
        batch_size: rows per global batch (a multiple of ``shards``).
        bucket_width: length granularity of the buckets, or None.
        shards: data-parallel parts of each batch.
        balanced: see above.
        shuffle: shuffle pairs within buckets and the order of batches every epoch.
        seed: the shuffle stream when ``fit`` passes no generator.

    Example:
        >>> batches = BucketedBatches(pairs.source, pairs.target, batch_size=64, shards=8)
        >>> (src, tgt_in), tgt_out, _ = next(batches.epoch())
        >>> batches.statistics()["padding_fraction"]
    """

    def __init__(self, source: Sequence[Sequence[int]], target: Sequence[Sequence[int]], *,
                 batch_size: int = 64, bucket_width: int | None = 8, shards: int = 1,
                 balanced: bool = True, shuffle: bool = True, seed: int = 0):
        if len(source) != len(target):
            raise ValueError(f"BucketedBatches: `source` and `target` must be aligned. "
                             f"Received: {len(source)} source and {len(target)} target rows")
        if not source:
            raise ValueError("BucketedBatches: no sentence pairs. Received: 0 pairs")
        for name, value in (("batch_size", batch_size), ("shards", shards)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BucketedBatches: `{name}` must be a positive int. "
                                 f"Received: {name}={value!r}")
        if batch_size % shards:
            raise ValueError(f"BucketedBatches: `batch_size` must be a multiple of `shards` "
                             f"(every shard takes an equal part). Received: "
                             f"batch_size={batch_size}, shards={shards}")
        if bucket_width is not None and (not isinstance(bucket_width, int) or bucket_width < 1):
            raise ValueError(f"BucketedBatches: `bucket_width` must be a positive int or "
                             f"None. Received: bucket_width={bucket_width!r}")
        self.source = [list(s) for s in source]
        self.target = [list(t) for t in target]
        self.batch_size, self.shards = int(batch_size), int(shards)
        self.bucket_width, self.balanced = bucket_width, bool(balanced)
        self.shuffle, self.seed = bool(shuffle), seed
        self._epochs = 0
        self._lengths = np.array([max(len(s), len(t) + 1)
                                  for s, t in zip(self.source, self.target)])
        width = bucket_width or 8
        self._bound = np.array([_round_up(n, width) for n in self._lengths])

    def __len__(self) -> int:
        return len(self.source)

    # ---------------------------------------------------------------- the epoch plan
    def _buckets(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        bounds = self._bound[indices]
        return {int(b): indices[bounds == b] for b in np.unique(bounds)}

    def _chunks(self, indices: np.ndarray, size: int, rng) -> list[np.ndarray]:
        if self.shuffle:
            indices = rng.permutation(indices)
        return [indices[i:i + size] for i in range(0, len(indices), size)]

    def plan(self, rng: np.random.Generator | None = None) -> list[list[np.ndarray]]:
        """One epoch: a list of global batches, each a list of ``shards`` arrays of pair
        indices (a part may be shorter than ``batch_size / shards``: its rows are padding).
        Every pair appears exactly once."""
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        everything = np.arange(len(self))
        part = self.batch_size // self.shards
        if self.bucket_width is None:  # no buckets: random global batches
            return [self._deal(chunk) for chunk in
                    self._chunks(everything, self.batch_size, rng)]
        if self.balanced or self.shards == 1:
            batches = []
            for bucket in self._buckets(everything).values():
                batches += [self._deal(chunk) for chunk in
                            self._chunks(bucket, self.batch_size, rng)]
            order = rng.permutation(len(batches)) if self.shuffle else range(len(batches))
            return [batches[i] for i in order]
        # Naive: every shard buckets and orders its own pairs independently.
        owner = (rng.permutation(len(self)) if self.shuffle else everything) % self.shards
        streams = []
        for s in range(self.shards):
            mine = everything[owner == s]
            local = []
            for bucket in self._buckets(mine).values():
                local += self._chunks(bucket, part, rng)
            order = rng.permutation(len(local)) if self.shuffle else range(len(local))
            streams.append([local[i] for i in order])
        steps = max(len(st) for st in streams)
        empty = np.zeros((0,), np.int64)
        return [[st[k] if k < len(st) else empty for st in streams] for k in range(steps)]

    def _deal(self, chunk: np.ndarray) -> list[np.ndarray]:
        """Splits a global batch into ``shards`` parts of similar token counts: pairs in
        order of length, dealt back and forth (a snake draft)."""
        if self.shards == 1:
            return [chunk]
        if not self.balanced:
            part = self.batch_size // self.shards
            return [chunk[i * part:(i + 1) * part] for i in range(self.shards)]
        tokens = np.array([len(self.source[i]) + len(self.target[i]) + 1 for i in chunk])
        ordered = chunk[np.argsort(-tokens, kind="stable")]
        parts = [[] for _ in range(self.shards)]
        for k, index in enumerate(ordered):
            round_, pos = divmod(k, self.shards)
            parts[pos if round_ % 2 == 0 else self.shards - 1 - pos].append(index)
        return [np.asarray(p, np.int64) for p in parts]

    def _arrays(self, parts: list[np.ndarray]) -> tuple:
        """``([source, target_in], target_out, None)`` of one planned global batch."""
        part = self.batch_size // self.shards
        s_len, t_len = self._padded_lengths([i for p in parts for i in p])
        src, t_in, t_out = [], [], []
        for p in parts:
            src.append(_pad([self.source[i] for i in p], s_len, part))
            t_in.append(_pad([[BOS_ID] + self.target[i] for i in p], t_len, part))
            t_out.append(_pad([self.target[i] + [EOS_ID] for i in p], t_len, part))
        return [np.concatenate(src), np.concatenate(t_in)], np.concatenate(t_out), None

    def _padded_lengths(self, used) -> tuple[int, int]:
        """Source and target lengths of a batch: each side's longest, rounded up to the
        bucket width (so a bucket has few shapes)."""
        width = self.bucket_width or 8
        if not used:
            return width, width
        return (_round_up(max(len(self.source[i]) for i in used), width),
                _round_up(max(len(self.target[i]) + 1 for i in used), width))

    def epoch(self, rng: np.random.Generator | None = None) -> Iterator[tuple]:
        """The batches of one epoch, ``([source, target_in], target_out, None)``."""
        if rng is None:
            rng = np.random.default_rng([self.seed, self._epochs])
            self._epochs += 1
        for parts in self.plan(rng):
            yield self._arrays(parts)

    def statistics(self, rng: np.random.Generator | None = None) -> dict:
        """Padding and balance of one epoch's batches (see :func:`batch_statistics`)."""
        return batch_statistics(self, self.plan(rng))

    # ------------------------------------------------------------------- fit protocol
    def as_data_adapter(self, *, steps_per_epoch=None, class_weight=None,
                        what="fit") -> "BucketedBatchesAdapter":
        """The adapter ``fit`` / ``evaluate`` / ``predict`` read these batches through."""
        if class_weight is not None:
            raise ValueError(f"{what}: `class_weight` does not apply to BucketedBatches "
                             f"(per-token targets). Received: class_weight={class_weight!r}")
        return BucketedBatchesAdapter(self, steps_per_epoch=steps_per_epoch, what=what)

    def num_batches(self) -> int | None:
        """Batches per epoch (None for the naive multi-shard scheme, which depends on the
        shuffle)."""
        if self.bucket_width is None:
            return -(-len(self) // self.batch_size)
        if self.balanced or self.shards == 1:
            return sum(-(-len(b) // self.batch_size)
                       for b in self._buckets(np.arange(len(self))).values())
        return None

    def __repr__(self):
        return (f"BucketedBatches({len(self)} pairs, batch_size={self.batch_size}, "
                f"bucket_width={self.bucket_width}, shards={self.shards}, "
                f"balanced={self.balanced})")


def batch_statistics(batches: BucketedBatches, plan: list[list[np.ndarray]]) -> dict:
    """Padding and per-shard load of the planned batches.

    Returns a dict: ``padding_fraction`` (padding positions / all positions of the padded
    source and target arrays, empty filler rows included), ``shard_token_imbalance`` (the
    mean over batches of max / mean real tokens per shard, minus 1: 0 is perfect balance),
    ``batches``, ``shapes`` (distinct padded (source, target) lengths) and ``pairs``
    (pairs used: each exactly once).

    Example:
        >>> batch_statistics(b, b.plan())["padding_fraction"]
    """
    part = batches.batch_size // batches.shards
    real = slots = 0
    imbalance, shapes, pairs = [], set(), 0
    for parts in plan:
        used = [i for p in parts for i in p]
        pairs += len(used)
        s_len, t_len = batches._padded_lengths(used)
        shapes.add((s_len, t_len))
        per_shard = [sum(len(batches.source[i]) + 2 * (len(batches.target[i]) + 1)
                         for i in p) for p in parts]
        real += sum(per_shard)
        slots += (s_len + 2 * t_len) * part * batches.shards  # source, target_in, target_out
        mean = sum(per_shard) / len(per_shard)
        if mean > 0:
            imbalance.append(max(per_shard) / mean - 1.0)
    return {"padding_fraction": 1.0 - real / slots, "batches": len(plan),
            "shard_token_imbalance": float(np.mean(imbalance)) if imbalance else 0.0,
            "shapes": sorted(shapes), "pairs": pairs}


class BucketedBatchesAdapter(DataAdapter):
    """:class:`BucketedBatches` seen through the adapter protocol: one epoch per
    :meth:`batches` call, shuffled with the generator ``fit`` passes."""

    _kind = "BucketedBatches"

    def __init__(self, source: BucketedBatches, *, steps_per_epoch=None, what="fit"):
        self._source = source
        self._steps = steps_per_epoch
        self._what = what

    @property
    def num_batches(self):
        n = self._source.num_batches()
        if self._steps is not None:
            return self._steps if n is None else min(n, self._steps)
        return n

    @property
    def batch_size(self):
        return self._source.batch_size

    @property
    def num_samples(self):
        return len(self._source)

    def batches(self, rng=None):
        source = self._source
        use = rng if source.shuffle and self._what == "fit" else None
        for k, batch in enumerate(source.epoch(use)):
            if self._steps is not None and k >= self._steps:
                return
            yield batch


def default_cache_dir() -> str:
    """Where examples keep the embedded corpus files (``$HYBRIDNET_DATA`` or
    ``~/.cache/hybridnet``)."""
    return os.environ.get("HYBRIDNET_DATA",
                          os.path.join(os.path.expanduser("~"), ".cache", "hybridnet"))
