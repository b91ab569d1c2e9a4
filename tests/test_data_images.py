"""hybridnet.data.images: sources, each transform against NumPy/Pillow, the grain pipeline
(determinism across worker counts, checkpointed position, sharding) and fit through the
adapter protocol."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from hybridnet.data import get_data_adapter
from hybridnet.data import images as I


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return I.make_synthetic_image_folder(tmp_path_factory.mktemp("shapes"), classes=3,
                                         per_class=24, size=(32, 40), seed=1)


def _image(seed=0, shape=(20, 30, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _indexed_source(n=22):
    """Image i is filled with i, so a batch tells which records it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3))
    return I.array_source(np.ascontiguousarray(images), np.arange(n))


def _ids(images):
    return images[:, 0, 0, 0].astype(int).tolist()


# ---------------------------------------------------------------------------- sources

def test_image_folder_decodes_generated_jpeg_and_png(folder):
    source = I.image_folder(folder)
    assert source.class_names == ["class_0", "class_1", "class_2"]
    assert len(source) == 72
    assert source.labels.tolist() == [0] * 24 + [1] * 24 + [2] * 24
    suffixes = {p.rsplit(".", 1)[1] for p in source.paths}
    assert suffixes == {"png", "jpg"}
    for i in (0, 1, 30, 71):
        record = source[i]
        with Image.open(source.paths[i]) as reference:
            np.testing.assert_array_equal(record["image"], np.asarray(reference.convert("RGB")))
        assert record["image"].shape == (32, 40, 3) and record["image"].dtype == np.uint8
        assert record["label"] == source.labels[i]


def test_array_source_records_and_checks():
    x = _image(0, (5, 6, 7, 3))
    source = I.array_source(x, np.arange(5))
    np.testing.assert_array_equal(source[3]["image"], x[3])
    assert source[3]["label"] == 3 and len(source) == 5
    assert I.array_source(x[..., 0], np.arange(5))[0]["image"].shape == (6, 7, 1)
    with pytest.raises(ValueError, match=r"array_source: `labels`.*\(5,\).*Received"):
        I.array_source(x, np.arange(4))
    with pytest.raises(ValueError, match=r"array_source: `images`.*Received: images="):
        I.array_source(np.zeros((5, 3)), np.arange(5))


# ------------------------------------------------------------------------- transforms

def test_resize_matches_pillow():
    image = _image(1, (20, 30, 3))
    out = I.Resize((12, 17)).map(image)
    reference = np.asarray(Image.fromarray(image).resize((17, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, reference)
    assert I.Resize(10).map(image).shape == (10, 15, 3)          # shorter side
    assert I.Resize(10).map(image.transpose(1, 0, 2)).shape == (15, 10, 3)
    as_float = I.Resize((12, 17)).map(image.astype(np.float32))
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, reference, atol=1.0)
    record = I.Resize((8, 8)).map({"image": image, "label": 4})
    assert record["image"].shape == (8, 8, 3) and record["label"] == 4


def test_center_crop_is_the_central_slice():
    image = _image(2, (20, 30, 3))
    np.testing.assert_array_equal(I.CenterCrop((10, 12)).map(image), image[5:15, 9:21])
    np.testing.assert_array_equal(I.CenterCrop(20).map(image), image[:, 5:25])


def test_crop_boxes_lie_within_the_image_and_jitter():
    boxes = [I.crop_box(np.random.default_rng(s), 48, 64, (0.2, 0.9), (0.5, 2.0))
             for s in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64 and h > 0 < w
        assert 0.15 <= h * w / (48 * 64) <= 0.95           # the drawn area, rounded
        assert 0.4 <= w / h <= 2.5
    assert len({(t, l) for t, l, _, _ in boxes}) > 50       # the position is jittered
    assert len({(h, w) for _, _, h, w in boxes}) > 50
    # Nothing fits: the central box with the ratio clamped.
    assert I.crop_box(np.random.default_rng(0), 10, 100, (0.9, 1.0), (1.0, 2.0),
                      max_attempts=1) == (0, 40, 10, 20)


def test_random_crop_takes_the_drawn_box():
    image = _image(3, (48, 64, 3))
    crop = I.RandomCropWithJitter(area_range=(0.2, 0.9), aspect_ratio_range=(0.5, 2.0))
    for seed in range(5):
        top, left, h, w = I.crop_box(np.random.default_rng(seed), 48, 64, (0.2, 0.9), (0.5, 2.0))
        out = crop.random_map(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image[top:top + h, left:left + w])


def test_random_flip_is_exact():
    image = _image(4, (6, 7, 3))
    seen = set()
    for seed in range(20):
        out = I.RandomFlip().random_map(image, np.random.default_rng(seed))
        flipped = np.array_equal(out, image[:, ::-1])
        assert flipped or np.array_equal(out, image)
        seen.add(flipped)
        both = I.RandomFlip("horizontal_and_vertical").random_map(image,
                                                                 np.random.default_rng(seed))
        assert any(np.array_equal(both, v) for v in
                   (image, image[::-1], image[:, ::-1], image[::-1, ::-1]))
    assert seen == {True, False}


@pytest.mark.parametrize("adjust, enhance", [
    (I.adjust_brightness, ImageEnhance.Brightness),
    (I.adjust_contrast, ImageEnhance.Contrast),
    (I.adjust_saturation, ImageEnhance.Color)])
@pytest.mark.parametrize("factor", [0.0, 0.6, 1.4])
def test_colour_adjustments_match_pillow(adjust, enhance, factor):
    image = _image(5, (16, 24, 3))
    ours = np.rint(np.clip(adjust(image, factor), 0, 255))
    reference = np.asarray(enhance(Image.fromarray(image)).enhance(factor))
    # Pillow rounds its grey levels to integers; we keep them in float.
    np.testing.assert_allclose(ours, reference, atol=2)


def test_color_jitter_ranges_and_identity():
    image = _image(6, (16, 24, 3))
    assert I.ColorJitter().random_map(image, np.random.default_rng(0)) is image
    jitter = I.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)
    outs = [jitter.random_map(image, np.random.default_rng(s)) for s in range(5)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert not np.array_equal(outs[0], outs[1])
    as_float = jitter.random_map(image.astype(np.float32) * 1.2, np.random.default_rng(0))
    assert as_float.dtype == np.float32 and 0 <= as_float.min() and as_float.max() <= 255
    # The factors come from the generator in order brightness, contrast, saturation.
    rng = np.random.default_rng(9)
    b, c, s = (rng.uniform(0.5, 1.5) for _ in range(3))
    expected = I.adjust_saturation(I.adjust_contrast(I.adjust_brightness(image, b), c), s)
    np.testing.assert_allclose(jitter.random_map(image, np.random.default_rng(9)),
                               np.rint(np.clip(expected, 0, 255)), atol=1)


def test_normalize():
    image = _image(7, (4, 5, 3))
    out = I.Normalize(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5)).map(image)
    expected = (image / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    unit = I.Normalize().map(image)
    assert 0.0 <= unit.min() and unit.max() <= 1.0


# --------------------------------------------------------------------------- pipeline

AUGMENT = [I.RandomCropWithJitter((0.3, 1.0)), I.Resize((16, 16)), I.RandomFlip(),
           I.ColorJitter(0.3, 0.3, 0.3), I.Normalize()]


def _take(pipeline, n):
    out = []
    for batch in pipeline:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_same_seed_same_batches_with_0_and_2_workers_and_resume(folder):
    source = I.image_folder(folder)
    make = lambda workers, seed=5: I.ImagePipeline(source, AUGMENT, batch_size=10,  # noqa: E731
                                                   seed=seed, worker_count=workers)
    with make(0) as p0:
        serial = _take(p0, 9)                      # crosses the first epoch boundary (8)
        assert p0.cpu_seconds > 0 and p0.samples_seen == 82 and p0.worker_cpu_seconds is None
    images, labels = serial[0]
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and 0 <= images.min() and images.max() <= 1
    assert serial[7][0].shape[0] == 2              # 72 = 7 * 10 + 2
    assert not np.array_equal(np.concatenate([b[1] for b in serial[:8]]), source.labels)
    with make(2) as p2:
        first = _take(p2, 4)
        state = json.loads(json.dumps(p2.get_state()))
        first += _take(p2, 2)
        assert p2.worker_cpu_seconds > 0
    for (xa, ya), (xb, yb) in zip(serial, first):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with make(0) as resumed:                       # a state taken with 2 workers
        resumed.set_state(state)
        rest = _take(resumed, 5)
    for (xa, ya), (xb, yb) in zip(serial[4:], rest):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with make(0, seed=6) as other:
        assert not np.array_equal(_take(other, 1)[0][0], serial[0][0])


def test_set_state_resumes_exactly_and_checks_the_pipeline():
    source = _indexed_source()
    pipeline = I.ImagePipeline(source, [I.RandomFlip()], batch_size=4, seed=1, num_epochs=3)
    everything = [_ids(x) for x, _ in pipeline]
    assert len(everything) == 18 and pipeline.position == 18
    assert sorted(sum(everything[:6], [])) == list(range(22))   # an epoch is a permutation
    assert everything[:6] != everything[6:12]                   # reshuffled per epoch
    again = I.ImagePipeline(source, [I.RandomFlip()], batch_size=4, seed=1, num_epochs=3)
    _take(again, 7)
    state = again.get_state()
    assert [_ids(x) for x, _ in again] == everything[7:]
    fresh = I.ImagePipeline(source, [I.RandomFlip()], batch_size=4, seed=1, num_epochs=3)
    assert [_ids(x) for x, _ in fresh.set_state(state)] == everything[7:]
    other = I.ImagePipeline(source, batch_size=8, seed=1)
    with pytest.raises(ValueError, match=r"set_state: .*Expected batch_size=8. Received: "
                                         r"batch_size=4"):
        other.set_state(state)


def test_shard_partitions_every_batch_of_an_epoch():
    source = _indexed_source(22)
    full = I.ImagePipeline(source, batch_size=6, seed=2, num_epochs=1, drop_remainder=False)
    with pytest.warns(UserWarning, match=r"last batch of an epoch \(4 samples\).*count=3"):
        shards = [full.shard(i, 3) for i in range(3)]
    parts = [[_ids(x) for x, _ in s] for s in shards]
    whole = [_ids(x) for x, _ in full]
    assert [s.batch_size for s in shards] == [2, 2, 2] and shards[0].num_samples == 7
    for b, batch in enumerate(whole[:3]):
        assert parts[0][b] + parts[1][b] + parts[2][b] == batch
    assert [p[3] for p in parts] == [[whole[3][0]], [whole[3][1]], [whole[3][2]]]
    seen = sorted(sum(sum(parts, []), []))
    assert len(seen) == len(set(seen)) == 21                     # one sample left out
    two = [I.ImagePipeline(source, batch_size=6, seed=2, num_epochs=1).shard(i, 2)
           for i in range(2)]
    assert sorted(sum([_ids(x) for s in two for x, _ in s], [])) == list(range(22))
    with pytest.raises(ValueError, match=r"divisible.*Received: batch_size=6, count=4"):
        full.shard(0, 4)
    with pytest.raises(ValueError, match=r"already a shard"):
        two[0].shard(0, 2)


def test_adapter_epochs_follow_the_stream():
    pipeline = I.ImagePipeline(_indexed_source(), batch_size=4, seed=0, num_epochs=2)
    adapter = get_data_adapter(pipeline, batch_size=99, shuffle=False)
    assert isinstance(adapter, I.ImagePipelineAdapter)
    assert (adapter.num_batches, adapter.batch_size, adapter.num_samples) == (6, 4, 22)
    first = [_ids(x) for x, y, sw in adapter.batches()]
    second = [_ids(x) for x, y, sw in adapter.batches()]
    assert len(first) == len(second) == 6 and first != second and not adapter.exhausted
    assert list(adapter.batches()) == [] and adapter.exhausted
    evaluation = get_data_adapter(I.ImagePipeline(_indexed_source(), batch_size=4,
                                                  shuffle=False), steps_per_epoch=2,
                                  what="evaluate")
    assert [[_ids(x) for x, _, _ in evaluation.batches()] for _ in range(2)] == \
        [[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2
    sharded = get_data_adapter(I.ImagePipeline(_indexed_source(), batch_size=4)).shard(1, 2)
    assert (sharded.shard_index, sharded.shard_count, sharded.batch_size) == (1, 2, 2)
    with pytest.raises(ValueError, match=r"`y` must be None"):
        get_data_adapter(pipeline, np.zeros(3))


def test_fit_trains_a_small_cnn_above_chance(folder):
    from hybridnet import Sequential, layers, optimizers, utils
    utils.set_random_seed(0)  # unseeded weights made the accuracy vary from run to run
    source = I.image_folder(folder)
    train = I.ImagePipeline(source, [
        I.RandomCropWithJitter((0.6, 1.0)), I.Resize((24, 24)), I.RandomFlip(),
        I.ColorJitter(0.1, 0.1, 0.1), I.Normalize()], batch_size=8, seed=0)
    test = I.ImagePipeline(source, [I.Resize((24, 24)), I.Normalize()], batch_size=24,
                           shuffle=False)
    model = Sequential([layers.Input((24, 24, 3)), layers.Conv2D(8, 3, activation="relu"),
                        layers.MaxPooling2D(2), layers.Conv2D(8, 3, activation="relu"),
                        layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")])
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(train, epochs=6, verbose=0)
    assert len(history.history["loss"]) == 6 and train.position == 54
    accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy > 0.6, accuracy                                    # chance: 1/3


def _pipeline_run(backup_dir=None, crash_at=None, save_freq=3, epochs=3):
    """A model fit on a shuffled ImagePipeline (22 records, batches of 4: 6 per epoch),
    with BackupAndRestore and a crash after ``crash_at`` batches when given."""
    from hybridnet import Sequential, callbacks, layers, optimizers, strategies, utils
    utils.set_random_seed(3)
    pipeline = I.ImagePipeline(_indexed_source(), [I.RandomFlip()], batch_size=4, seed=7)
    model = Sequential([layers.Input((4, 4, 3)), layers.Flatten(),
                        layers.Dense(22, activation="softmax")])
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  strategy=strategies.DataParallel(devices=__import__("jax").devices()[:1]))
    seen = []

    class Record(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(pipeline.position)
            if crash_at is not None and len(seen) == crash_at:
                raise RuntimeError("simulated crash")
    cbs = [Record()]
    if backup_dir is not None:
        cbs.insert(0, callbacks.BackupAndRestore(backup_dir, save_freq=save_freq))
    model.fit(pipeline, epochs=epochs, verbose=0, callbacks=cbs)
    return model, pipeline


@pytest.mark.parametrize("save_freq, crash_at", [(3, 10), ("epoch", 9)])
def test_backup_and_restore_resumes_the_image_pipeline_where_it_was(tmp_path, save_freq,
                                                                    crash_at):
    """A run killed mid-epoch and started again (a new pipeline at the stream's start)
    continues the stream from the backup: the same weights as an uninterrupted run."""
    want, whole = _pipeline_run()
    assert whole.position == 18
    with pytest.raises(RuntimeError, match="simulated crash"):
        _pipeline_run(tmp_path / "b", crash_at=crash_at, save_freq=save_freq)
    got, resumed = _pipeline_run(tmp_path / "b", save_freq=save_freq)
    assert resumed.position == 18        # not 18 + the batches of the crashed run
    for a, b in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert got.iterations == 18


def test_stream_state_moves_across_process_counts():
    """The position a backup stores counts global batches and leaves the shard out: taken
    on process 1 of 2, it positions one process's pipeline at the same batch."""
    make = lambda: I.ImagePipeline(_indexed_source(), batch_size=4, seed=7)  # noqa: E731
    half = get_data_adapter(make()).shard(1, 2)
    first = [_ids(x) for x, _, _ in half.batches()]
    state = json.loads(json.dumps(half.stream_state()))
    assert state["position"] == 6 and "shard" not in state
    whole = get_data_adapter(make())
    assert whole.seek_stream(state, 2, "test") == 0           # moved, nothing to drop
    rest = [_ids(x) for x, _, _ in whole.batches()]
    reference = [_ids(x) for x, _ in _take(make(), 12)]
    assert rest == reference[8:12]                            # the epoch's 4 batches left
    assert first == [b[len(b) // 2:] for b in reference[:6]]  # process 1: second halves


def test_backup_of_another_image_pipeline_is_refused(tmp_path):
    from hybridnet import callbacks
    with pytest.raises(RuntimeError, match="simulated crash"):
        _pipeline_run(tmp_path / "b", crash_at=4)
    model, _ = _pipeline_run(epochs=0)
    other = I.ImagePipeline(_indexed_source(), batch_size=2, seed=7)
    with pytest.raises(ValueError, match=r"BackupAndRestore: the backup .* was taken on "
                                         r"another ImagePipeline.*Expected batch_size=2. "
                                         r"Received: batch_size=4"):
        model.fit(other, epochs=3, verbose=0,
                  callbacks=[callbacks.BackupAndRestore(tmp_path / "b", save_freq=3)])


# -------------------------------------------------------------------------- bad input

def test_bad_input_says_what_was_received(tmp_path, folder):
    with pytest.raises(ValueError, match=r"image_folder: `path` must be an existing "
                                         r"directory.*does not exist"):
        I.image_folder(tmp_path / "missing")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match=r"no class sub-directories"):
        I.image_folder(tmp_path / "empty_root")
    root = I.make_synthetic_image_folder(tmp_path / "data", classes=2, per_class=2, size=8)
    (root / "class_2").mkdir()
    (root / "class_2" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"class_2.*no image file.*empty class 'class_2'"):
        I.image_folder(root)
    (root / "class_2" / "broken.png").write_bytes(b"\x89PNG not really")
    source = I.image_folder(root)
    with pytest.raises(ValueError, match=r"decode_image: cannot decode .*broken.png"):
        source[len(source) - 1]
    pipeline = I.ImagePipeline(source, batch_size=5, shuffle=False)
    with pytest.raises(ValueError, match=r"broken.png"):
        list(pipeline)
    with pytest.raises(ValueError, match=r"CenterCrop: the crop size must fit.*"
                                         r"size=\(40, 40\) for an image of shape \(32, 40, 3\)"):
        I.CenterCrop(40).map(I.image_folder(folder)[0]["image"])
    with pytest.raises(ValueError, match=r"RandomCropWithJitter: `area_range`.*"
                                         r"Received: area_range=\(0.5, 1.5\)"):
        I.RandomCropWithJitter(area_range=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"Resize: `size`.*Received: size=\(0, 4\)"):
        I.Resize((0, 4))
    (root / "class_2" / "broken.png").unlink()
    (root / "class_2" / "notes.txt").unlink()
    (root / "class_2").rmdir()
    with pytest.raises(ValueError, match=r"images of a batch must have one shape.*Resize"):
        list(I.ImagePipeline(I.image_folder(root), [I.RandomCropWithJitter()], batch_size=4,
                             num_epochs=1))
    with pytest.raises(ValueError, match=r"`transforms` must be grain Map or RandomMap.*"
                                         r"transforms\[0\]"):
        I.ImagePipeline(source, [lambda x: x])
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int"):
        I.ImagePipeline(source, batch_size=0)
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*32\)"):
        I.ImagePipeline(source, seed=-1)


def test_workers_in_a_plain_script_without_absl(tmp_path):
    """A script that never parses absl flags, with its loop and pipeline at module level:
    no absl error, no error from grain's finalizers at exit, no leaked shared memory."""
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from hybridnet.data import images as I
        if __name__ == "__main__":
            source = I.array_source(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8))
            pipeline = I.ImagePipeline(source, [I.Normalize()], batch_size=4,
                                       worker_count=2)     # endless, left open at exit
            for x, y in pipeline:
                if pipeline.position == 3:
                    break
            print("batches", pipeline.position, x.shape)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batches 3 (4, 4, 4, 3)" in done.stdout
    assert "Error" not in done.stderr and "leaked" not in done.stderr, done.stderr[-2000:]
