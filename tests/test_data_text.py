"""hybridnet.data.text: parallel corpora, the synthetic language pair, the subword
tokenizer, bucketing and load-balanced batches (no model is trained here)."""
import collections

import numpy as np
import pytest

from hybridnet.data import get_data_adapter
from hybridnet.data import text as T


@pytest.fixture(scope="module")
def corpus():
    train, test = T.embedded_corpus(3000, 100, seed=1)
    tok = T.SubwordTokenizer.train(train.source + train.target, vocab_size=200)
    pairs = T.encode_pairs(tok, train.source, train.target, max_length=40)
    return train, test, tok, pairs


# ------------------------------------------------------------------------ corpus files

def test_read_parallel_round_trip(tmp_path):
    text = T.ParallelText(["a b", "ç ü"], ["x", "y z"])
    T.write_parallel(text, str(tmp_path / "s.txt"), str(tmp_path / "t.txt"))
    assert T.read_parallel(str(tmp_path / "s.txt"), str(tmp_path / "t.txt")) == text


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("eins\nzwei\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        T.read_parallel(str(src), str(tgt))
    msg = str(e.value)
    assert f"{src} has 3 lines" in msg and f"{tgt} has 2 lines" in msg


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    src, tgt = tmp_path / "a.src", tmp_path / "a.tgt"
    src.write_bytes(b"fine\nalso fine\nbad \xff\xfe bytes\n")
    tgt.write_text("1\n2\n3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.src: line 3 is not valid UTF-8"):
        T.read_parallel(str(src), str(tgt))


# ------------------------------------------------------------------- synthetic language

def test_embedded_corpus_is_deterministic_reordered_and_disjoint():
    a_train, a_test = T.embedded_corpus(300, 50, seed=3)
    b_train, b_test = T.embedded_corpus(300, 50, seed=3)
    assert a_train == b_train and a_test == b_test
    assert not set(a_test.source) & set(a_train.source)
    # SVO -> SOV: every target clause ends with the object marker and a verb.
    for s, t in zip(a_train.source, a_train.target):
        for clause in t.split(" e "):
            words = clause.split()
            assert words[-2] == "ka" and words[-1].endswith(("et", "ent")), (s, t)


def test_agreement_of_determiner_adjective_and_verb():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(400):  # one-clause sentences whose subject is "the NOUN"
        s, t = T.synthetic_pair(rng)
        src, tgt = s.split(), t.split()
        if " and " in s or src[0] != "the" or src[1] in T._ADJECTIVES:
            continue
        noun = src[1]
        plural = noun not in T._NOUNS
        stem, gender = T._NOUNS[noun[:-1] if plural else noun]
        number = "pl" if plural else "sg"
        assert tgt[0] == T._DETERMINERS[(True, gender, number)], (s, t)
        assert tgt[1] == stem + ("i" if plural else "")
        assert tgt[-1].endswith("ent" if plural else "et")
        checked += 1
    assert checked > 20


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_special_ids_round_trip_and_unknown(corpus):
    train, _, tok, _ = corpus
    assert (T.PAD_ID, T.UNK_ID, T.BOS_ID, T.EOS_ID) == (0, 1, 2, 3)
    ids = tok.encode(train.target[0])
    assert tok.decode(ids) == train.target[0]
    assert tok.decode(ids + [T.EOS_ID, 7, 8]) == train.target[0]  # stops at </s>
    assert tok.decode([tok.vocab_size + 3]) == tok.decode([T.UNK_ID])  # padded vocabulary
    unknown = tok.encode("the cat sees a Ω€Ж")
    assert T.UNK_ID in unknown and all(0 <= i < tok.vocab_size for i in unknown)
    restored = T.SubwordTokenizer(tok.model_proto)
    assert restored.encode(train.source[1]) == tok.encode(train.source[1])


def test_encode_pairs_filters_and_counts_empty_and_too_long(corpus):
    _, _, tok, _ = corpus
    source = ["the cat sees a dog", "", "   ", "the dog sees the cat " * 10, "a cat sees a dog"]
    target = ["la miru kalo ka videt", "x", "y", "lo kalo la miru ka videt", ""]
    pairs = T.encode_pairs(tok, source, target, max_length=20)
    assert (len(pairs), pairs.dropped_empty, pairs.dropped_too_long) == (1, 3, 1)
    assert pairs.lines.tolist() == [0]
    assert pairs.source[0][-1] == T.EOS_ID and T.EOS_ID not in pairs.target[0]
    with pytest.raises(ValueError, match="max_length"):
        T.encode_pairs(tok, source, target, max_length=1)


# ---------------------------------------------------------------------------- batching

def _pairs_of_epoch(batches, rng=None):
    seen = []
    for (src, t_in), t_out, sw in batches.epoch(rng):
        assert sw is None and src.shape[0] == t_in.shape[0] == batches.batch_size
        assert t_in.shape == t_out.shape
        width = batches.bucket_width or 8
        assert src.shape[1] % width == 0 and t_in.shape[1] % width == 0
        for s, ti, to in zip(src, t_in, t_out):
            if not s.any():
                assert not ti.any() and not to.any()  # a filler row is all padding
                continue
            n = int((to != 0).sum())
            assert ti[0] == T.BOS_ID and to[n - 1] == T.EOS_ID
            assert (ti[1:n] == to[:n - 1]).all()  # target_in is target_out shifted
            seen.append((tuple(s[s != 0]), tuple(to[:n - 1])))
    return seen


@pytest.mark.parametrize("width,shards,balanced", [(8, 1, True), (8, 8, True), (8, 8, False),
                                                   (None, 4, True)])
def test_every_pair_exactly_once_per_epoch(corpus, width, shards, balanced):
    _, _, _, pairs = corpus
    b = T.BucketedBatches(pairs.source, pairs.target, batch_size=64, bucket_width=width,
                          shards=shards, balanced=balanced, seed=2)
    expected = collections.Counter(zip(map(tuple, pairs.source), map(tuple, pairs.target)))
    got = collections.Counter(_pairs_of_epoch(b))
    assert got == expected
    assert b.statistics()["pairs"] == len(pairs)
    if b.num_batches() is not None:
        assert b.num_batches() == len(b.plan())


def test_bucketing_pads_less_and_balancing_evens_the_shards():
    train, _ = T.embedded_corpus()
    tok = T.SubwordTokenizer.train(train.source[:5000] + train.target[:5000], vocab_size=256)
    pairs = T.encode_pairs(tok, train.source[:8000], train.target[:8000], max_length=40)

    def stats(**kw):
        return T.BucketedBatches(pairs.source, pairs.target, batch_size=128, shards=8,
                                 **kw).statistics()
    bucketed = stats(bucket_width=8, balanced=True)
    naive_buckets = stats(bucket_width=8, balanced=False)
    unbucketed = stats(bucket_width=None)
    assert bucketed["padding_fraction"] < 0.35 < 0.5 < unbucketed["padding_fraction"]
    assert bucketed["padding_fraction"] < naive_buckets["padding_fraction"]
    assert bucketed["shard_token_imbalance"] < 0.05 < 0.3 < \
        naive_buckets["shard_token_imbalance"]


def test_balanced_shards_come_from_one_bucket(corpus):
    _, _, _, pairs = corpus
    b = T.BucketedBatches(pairs.source, pairs.target, batch_size=64, shards=8, bucket_width=8)
    for parts in b.plan():
        bounds = {int(b._bound[i]) for p in parts for i in p}
        assert len(bounds) == 1
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_adapter_protocol_for_fit(corpus):
    _, _, _, pairs = corpus
    b = T.BucketedBatches(pairs.source, pairs.target, batch_size=32, bucket_width=8)
    adapter = get_data_adapter(b, steps_per_epoch=3)
    assert adapter.num_batches == 3 and adapter.batch_size == 32
    assert adapter.num_samples == len(pairs)
    got = list(adapter.batches(np.random.default_rng(0)))
    assert len(got) == 3
    (src, t_in), t_out, sw = got[0]
    assert src.dtype == np.int32 and t_out.shape == t_in.shape and sw is None
    shard = adapter.shard(1, 2)
    (s2, _), _, _ = next(iter(shard.batches(np.random.default_rng(0))))
    np.testing.assert_array_equal(s2, src[16:])
    with pytest.raises(ValueError, match="class_weight"):
        get_data_adapter(b, class_weight={0: 1.0})


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=30, shards=8), "multiple of `shards`"),
    (dict(batch_size=0), "batch_size"),
    (dict(bucket_width=0), "bucket_width"),
])
def test_bad_batching_arguments(corpus, kwargs, match):
    _, _, _, pairs = corpus
    with pytest.raises(ValueError, match=match):
        T.BucketedBatches(pairs.source, pairs.target, **kwargs)
