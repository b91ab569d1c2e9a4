"""Image input pipelines on grain: sources, augmentations, batches from worker processes.

A pipeline reads records ``{"image": HWC array, "label": int}`` from a random-access source
(:func:`image_folder` decodes JPEG/PNG files with Pillow; :func:`array_source` wraps
arrays), runs a chain of grain transforms on each record, and stacks them into batches
``(images, labels)``. :class:`ImagePipeline` builds it on ``grain.MapDataset``:

- every random transform draws from a generator seeded by the pipeline's seed and the
  record's position in the stream (epoch and index), so the batches depend on the seed
  only, never on the worker count or timing;
- a batch is computed whole by one worker process (``worker_count > 0``, grain's
  ``mp_prefetch``, processes started with "spawn") or by a background thread; workers
  take batches in turn and the consumer reads them in order;
- the position (batches handed out) is the checkpoint: :meth:`ImagePipeline.get_state` /
  :meth:`ImagePipeline.set_state`, valid under any worker count;
- :meth:`ImagePipeline.shard` gives process ``i`` of ``n`` the ``i``-th slice of every
  global batch, and only that slice is decoded and transformed there;
- the CPU time spent preparing the batches handed out is counted
  (:attr:`ImagePipeline.cpu_seconds`, measured in the worker around each batch).

``model.fit(pipeline)`` goes through :func:`hybridnet.data.get_data_adapter`, which asks
the pipeline for its :class:`ImagePipelineAdapter`.

Example:
    >>> from hybridnet.data import images
    >>> source = images.image_folder("photos/")        # photos/<class>/<file>.jpg
    >>> train = images.ImagePipeline(source, [
    ...     images.RandomCropWithJitter(area_range=(0.25, 1.0)), images.Resize((224, 224)),
    ...     images.RandomFlip(), images.ColorJitter(0.4, 0.4, 0.4), images.Normalize()],
    ...     batch_size=64, seed=0, worker_count=4)
    >>> model.fit(train, epochs=10)
"""
from __future__ import annotations

import atexit
import math
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import grain
import numpy as np
from PIL import Image, ImageDraw

from hybridnet.data.adapters import (_BatchSourceAdapter, _check_positive_int, _check_shard,
                                     _clean_class_weight, _describe)

__all__ = ["ArraySource", "CenterCrop", "ColorJitter", "ImageFolderSource", "ImagePipeline",
           "ImagePipelineAdapter", "Normalize", "RandomCropWithJitter", "RandomFlip",
           "Resize", "array_source", "crop_box", "decode_image", "image_folder",
           "make_synthetic_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------- sources

def decode_image(path) -> np.ndarray:
    """A JPEG or PNG file -> its RGB pixels, a ``(height, width, 3)`` uint8 array.

    Example:
        >>> decode_image("cat.jpg").shape
        (375, 500, 3)
    """
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"decode_image: cannot decode {str(path)!r} as a JPEG or PNG "
                         f"image. Received: {type(e).__name__}: {e}") from None


class ImageFolderSource:
    """Image files with class labels, read and decoded on access: a grain random-access
    source of records ``{"image": uint8 (H, W, 3), "label": int32}``.

    Attributes:
        paths: the image files, by class then by name.
        labels: int32 class index of each file.
        class_names: the class names (sub-directory names), sorted; label ``k`` is
            ``class_names[k]``.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str]):
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int32)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": decode_image(self.paths[index]), "label": self.labels[index]}

    def __repr__(self):
        root = os.path.dirname(os.path.dirname(self.paths[0])) if self.paths else ""
        return (f"ImageFolderSource({root!r}, {len(self.paths)} images, "
                f"{len(self.class_names)} classes)")


def image_folder(path) -> ImageFolderSource:
    """The images under ``path``, one class per sub-directory (as Keras'
    ``image_dataset_from_directory``): class names sorted, files with a ``.jpg``,
    ``.jpeg`` or ``.png`` extension (any case) sorted by name; other files are skipped.

    Example:
        >>> source = image_folder("flowers/")   # flowers/daisy/1.jpg, flowers/rose/7.png
        >>> source.class_names, len(source), source[0]["image"].shape
        (['daisy', 'rose'], 2, (240, 320, 3))
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image_folder: `path` must be an existing directory holding one "
                         f"sub-directory of images per class. Received: path={str(path)!r} "
                         f"({'a file' if root.exists() else 'does not exist'})")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image_folder: `path` holds no class sub-directories. Expected "
                         f"path/<class name>/<image>.jpg. Received: path={str(path)!r}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file()
                       and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"image_folder: the class directory {str(root / name)!r} holds "
                             f"no image file (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                             f"Received: an empty class {name!r}")
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    return ImageFolderSource(paths, labels, classes)


class ArraySource:
    """Images held in an array: a grain random-access source of records
    ``{"image": images[i], "label": labels[i]}``. ``class_names`` is None."""

    class_names = None

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}

    def __repr__(self):
        return f"ArraySource(images of shape {self.images.shape}, {self.images.dtype})"


def array_source(images, labels) -> ArraySource:
    """Arrays as a pipeline source: ``images`` NHWC (or NHW, given one channel), ``labels``
    integer class indices of shape ``(N,)``.

    Example:
        >>> source = array_source(np.zeros((100, 32, 32, 3), np.uint8), np.arange(100) % 10)
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"array_source: `images` must be a non-empty array of shape "
                         f"(samples, height, width, channels). Received: "
                         f"images={_describe(images)}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"array_source: `labels` must be integer class indices of shape "
                         f"({images.shape[0]},), one per image. Received: "
                         f"labels={_describe(labels)}")
    return ArraySource(images, labels.astype(np.int32))


# ------------------------------------------------------------------------- transforms

def _on_image(element, fn):
    """Applies ``fn`` to a record's image (or to a bare image array)."""
    if isinstance(element, dict):
        return {**element, "image": fn(element["image"])}
    return fn(element)


def _pair(what: str, name: str, value) -> tuple[int, int]:
    """An int or an (int, int) -> a pair of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in pair)):
        raise ValueError(f"{what}: `{name}` must be a positive int or a (height, width) pair "
                         f"of positive ints. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def _range(what: str, name: str, value, low: float, high: float) -> tuple[float, float]:
    """A (min, max) pair of floats with ``low < min <= max <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not low < lo <= hi <= high:
        raise ValueError(f"{what}: `{name}` must be a (min, max) pair with {low} < min <= "
                         f"max <= {high}. Received: {name}={value!r}")
    return lo, hi


_RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "area": Image.Resampling.BOX}


def resize_image(image: np.ndarray, size: tuple[int, int],
                 interpolation: str = "bilinear") -> np.ndarray:
    """Pillow's resize of an HWC array to ``size`` (height, width); uint8 stays uint8,
    other types are resized per channel in float32."""
    height, width = size
    method = _RESAMPLING[interpolation]
    if image.dtype == np.uint8 and image.shape[-1] in (3, 4):
        return np.asarray(Image.fromarray(image).resize((width, height), method))
    mode_type = np.uint8 if image.dtype == np.uint8 else np.float32
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], mode_type))
                           .resize((width, height), method)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


class Resize(grain.transforms.Map):
    """Resizes images with Pillow: to ``size`` = (height, width), or, for an int, so that
    the shorter side is ``size`` (aspect ratio kept).

    Example:
        >>> Resize((224, 224)).map(np.zeros((375, 500, 3), np.uint8)).shape
        (224, 224, 3)
    """

    def __init__(self, size, interpolation: str = "bilinear"):
        self.shorter_side = self.size = None
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            self.shorter_side = _pair("Resize", "size", size)[0]
        else:
            self.size = _pair("Resize", "size", size)
        if interpolation not in _RESAMPLING:
            raise ValueError(f"Resize: `interpolation` must be one of {sorted(_RESAMPLING)}. "
                             f"Received: interpolation={interpolation!r}")
        self.interpolation = interpolation

    def target(self, height: int, width: int) -> tuple[int, int]:
        if self.shorter_side is None:
            return self.size
        s = self.shorter_side
        if height <= width:
            return s, max(1, round(width * s / height))
        return max(1, round(height * s / width)), s

    def map(self, element):
        return _on_image(element, lambda image: resize_image(
            image, self.target(*image.shape[:2]), self.interpolation))


class CenterCrop(grain.transforms.Map):
    """Crops the central ``size`` = (height, width) (or ``size`` x ``size``) of images.

    Example:
        >>> CenterCrop(224).map(np.zeros((256, 300, 3), np.uint8)).shape
        (224, 224, 3)
    """

    def __init__(self, size):
        self.size = _pair("CenterCrop", "size", size)

    def map(self, element):
        return _on_image(element, self._crop)

    def _crop(self, image):
        h, w = self.size
        height, width = image.shape[:2]
        if h > height or w > width:
            raise ValueError(f"CenterCrop: the crop size must fit in the image. Received: "
                             f"size={self.size} for an image of shape {image.shape}")
        top, left = (height - h) // 2, (width - w) // 2
        return image[top:top + h, left:left + w]


def crop_box(rng: np.random.Generator, height: int, width: int,
             area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
             max_attempts: int = 10) -> tuple[int, int, int, int]:
    """A random crop box ``(top, left, box_height, box_width)`` inside a
    ``height`` x ``width`` image (Inception's distorted bounding box): the box covers an
    area fraction drawn from ``area_range``, has a width/height ratio drawn log-uniformly
    from ``aspect_ratio_range``, and its position is jittered uniformly over the image.
    After ``max_attempts`` boxes that do not fit, the central box of the image with the
    ratio clamped into range.

    Example:
        >>> crop_box(np.random.default_rng(0), 375, 500, area_range=(0.5, 1.0))
        (2, 186, 359, 272)
    """
    area = height * width
    log_lo, log_hi = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
    for _ in range(max_attempts):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < aspect_ratio_range[0]:
        w, h = width, min(height, max(1, int(round(width / aspect_ratio_range[0]))))
    elif ratio > aspect_ratio_range[1]:
        h, w = height, min(width, max(1, int(round(height * aspect_ratio_range[1]))))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class RandomCropWithJitter(grain.transforms.RandomMap):
    """Crops a random box of each image (:func:`crop_box`: random area fraction, aspect
    ratio and position). Follow it with :class:`Resize` for a fixed output size.

    Example:
        >>> crop = RandomCropWithJitter(area_range=(0.25, 1.0))
        >>> crop.random_map(np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0)).shape
        (58, 51, 3)
    """

    def __init__(self, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                 max_attempts: int = 10):
        self.area_range = _range("RandomCropWithJitter", "area_range", area_range, 0.0, 1.0)
        self.aspect_ratio_range = _range("RandomCropWithJitter", "aspect_ratio_range",
                                         aspect_ratio_range, 0.0, math.inf)
        _check_positive_int("RandomCropWithJitter", "max_attempts", max_attempts)
        self.max_attempts = int(max_attempts)

    def random_map(self, element, rng: np.random.Generator):
        def crop(image):
            top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], self.area_range,
                                       self.aspect_ratio_range, self.max_attempts)
            return image[top:top + h, left:left + w]
        return _on_image(element, crop)


class RandomFlip(grain.transforms.RandomMap):
    """Flips images left-right (and/or up-down) with probability 1/2 each, as Keras'
    ``RandomFlip``: ``mode`` is "horizontal", "vertical" or "horizontal_and_vertical".

    Example:
        >>> RandomFlip().random_map(np.arange(3).reshape(1, 3, 1), np.random.default_rng(2))[..., 0]
        array([[2, 1, 0]])
    """

    _AXES = {"horizontal": (1,), "vertical": (0,), "horizontal_and_vertical": (1, 0)}

    def __init__(self, mode: str = "horizontal"):
        if mode not in self._AXES:
            raise ValueError(f"RandomFlip: `mode` must be one of {list(self._AXES)}. "
                             f"Received: mode={mode!r}")
        self.mode = mode

    def random_map(self, element, rng: np.random.Generator):
        flips = [axis for axis in self._AXES[self.mode] if rng.random() < 0.5]
        return _on_image(element, lambda image: np.flip(image, flips) if flips else image)


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L"


def _grayscale(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] >= 3:
        return image[..., :3] @ _GRAY
    return image.mean(axis=-1)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """``image * factor`` (float32; 0 gives black, 1 the image), as Pillow's
    ``ImageEnhance.Brightness``."""
    return image.astype(np.float32) * np.float32(factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend of the image with its mean grey level (float32; 0 gives flat grey, 1 the
    image), as Pillow's ``ImageEnhance.Contrast``."""
    image = image.astype(np.float32)
    mean = _grayscale(image).mean(dtype=np.float32)
    return mean + np.float32(factor) * (image - mean)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend of the image with its greyscale version (float32; 0 gives grey, 1 the image),
    as Pillow's ``ImageEnhance.Color``."""
    image = image.astype(np.float32)
    gray = _grayscale(image)[..., None]
    return gray + np.float32(factor) * (image - gray)


class ColorJitter(grain.transforms.RandomMap):
    """Random brightness, contrast and saturation changes (in that order), each by a
    factor drawn uniformly from ``[max(0, 1 - s), 1 + s]`` for strength ``s``; 0 leaves
    that property unchanged. Images hold values in [0, 255] (uint8, or float before
    :class:`Normalize`); the result is clipped to that range and keeps the dtype.

    Example:
        >>> jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    """

    _ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation)

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"ColorJitter: `{name}` must be a float >= 0. Received: "
                                 f"{name}={value!r}")
        self.strengths = (float(brightness), float(contrast), float(saturation))

    def random_map(self, element, rng: np.random.Generator):
        factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in self.strengths]
        return _on_image(element, lambda image: self._apply(image, factors))

    def _apply(self, image, factors):
        out = image
        for adjust, strength, factor in zip(self._ADJUST, self.strengths, factors):
            if strength:
                out = adjust(out, factor)
        if out is image:
            return image
        out = np.clip(out, 0.0, 255.0)
        if image.dtype == np.uint8:
            return np.rint(out).astype(np.uint8)
        return out.astype(image.dtype, copy=False)


class Normalize(grain.transforms.Map):
    """``(image * scale - mean) / std`` in float32, per channel; the defaults map [0, 255]
    to [0, 1].

    Example:
        >>> imagenet = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    """

    def __init__(self, mean=0.0, std=1.0, scale: float = 1 / 255):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        if self.mean.ndim > 1 or self.std.ndim > 1 or not np.all(self.std > 0):
            raise ValueError(f"Normalize: `mean` and `std` must be floats or per-channel "
                             f"sequences, `std` > 0. Received: mean={mean!r}, std={std!r}")
        self.scale = np.float32(scale)

    def map(self, element):
        return _on_image(element, lambda image: (image.astype(np.float32) * self.scale
                                                 - self.mean) / self.std)


# --------------------------------------------------------------------------- pipeline

def _epoch_batches(n: int, batch_size: int, drop_remainder: bool, count: int) -> int:
    """Batches per epoch of ``n`` records when every batch is split over ``count``
    processes (a last batch smaller than ``count`` is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + int(bool(rest) and not drop_remainder and rest >= count)


def _batch_rows(n: int, batch_size: int, batch: int, index: int, count: int) -> range:
    """Positions within the epoch of process ``index``'s slice of batch ``batch``."""
    lo = batch * batch_size
    size = (min(lo + batch_size, n) - lo) // count
    return range(lo + index * size, lo + (index + 1) * size)


class _Batches(grain.MapDataset):
    """Element k of the endless stream: a whole batch (this shard's slice), computed where
    it is read, with the CPU time it took."""

    def __init__(self, records: grain.MapDataset, n: int, batch_size: int,
                 per_epoch: int, index: int, count: int):
        super().__init__(records)
        self._n, self._batch_size, self._per_epoch = n, batch_size, per_epoch
        self._index, self._count = index, count

    def __len__(self) -> int:
        # Endless for grain: workers that reach the end of a finite stream leave their
        # last batch in shared memory (grain 0.2.18); the pipeline stops at its end.
        return 2 ** 62

    def __str__(self):
        return f"ImagePipelineBatches(batch_size={self._batch_size})"

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        start = time.thread_time()
        epoch, batch = divmod(k, self._per_epoch)
        offset = epoch * self._n
        records = [self._parent[offset + p] for p in
                   _batch_rows(self._n, self._batch_size, batch, self._index, self._count)]
        shapes = {r["image"].shape for r in records}
        if len(shapes) > 1:
            raise ValueError(f"ImagePipeline: the images of a batch must have one shape; end "
                             f"the transforms with Resize or CenterCrop to a fixed size. "
                             f"Received: image shapes {sorted(shapes)} in batch {k}")
        images = np.stack([r["image"] for r in records])
        labels = np.asarray([r["label"] for r in records], np.int32)
        return images, labels, time.thread_time() - start, os.getpid(), time.process_time()


def _mark_absl_flags_parsed() -> None:
    """grain 0.2.18's worker processes read absl flags, which raise unless parsed."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


# Pipelines with a live grain iterator. Their workers and shared memory are released
# before interpreter teardown, where grain 0.2.18's finalizers fail (a pipeline kept in
# a global of a script would otherwise print errors at exit).
_LIVE: "weakref.WeakSet[ImagePipeline]" = weakref.WeakSet()


@atexit.register
def _close_live_pipelines() -> None:
    for pipeline in list(_LIVE):
        pipeline.close()


class ImagePipeline:
    """Batches ``(images, labels)`` of transformed records, deterministic for a seed.

    The pipeline is a stream of ``num_epochs`` epochs (forever when None), each a pass
    over the source (reshuffled per epoch with ``shuffle``). Iterating it hands out the
    next batches from its position; :meth:`get_state` / :meth:`set_state` save and
    restore that position, and a restored pipeline yields exactly the batches the saved
    one would have. Batches are NumPy arrays: images stacked as the transforms leave
    them (uint8, or float32 after :class:`Normalize`), labels int32.

    Cost accounting: each batch is timed (``time.thread_time``) where it is computed,
    around reading, decoding, transforming and stacking its records.
    :attr:`cpu_seconds` sums it over the batches handed out (and :attr:`samples_seen`
    counts their samples), so ``cpu_seconds / samples_seen`` is the preprocessing CPU
    per sample, whatever the worker count. :attr:`worker_cpu_seconds` is the whole CPU
    time of the worker processes (start-up and batches still queued included).

    Args:
        source: a random-access source of records ``{"image", "label"}``
            (:func:`image_folder`, :func:`array_source`, or any object with ``__len__``
            and ``__getitem__`` giving such records).
        transforms: grain ``Map`` / ``RandomMap`` transforms applied to every record in
            order. Random ones get a generator seeded by ``seed`` and the record's
            position in the stream.
        batch_size: samples per (global) batch.
        seed: int in [0, 2**32): the shuffle and every random transform.
        shuffle: a new order every epoch.
        num_epochs: epochs in the stream; None repeats forever.
        worker_count: processes computing batches (0: a background thread of this
            process); the batches are the same for any count. Workers are spawned and
            receive the source and transforms by pickling (cloudpickle), so an array
            source is copied to each.
        prefetch: batches computed ahead, per worker (0 with no workers: none).
        drop_remainder: leave out each epoch's last, smaller batch (one compiled shape).

    With ``worker_count > 0`` a script must guard its entry point with
    ``if __name__ == "__main__":`` (workers are spawned and import it). :meth:`close`
    (or a ``with`` block) stops the workers; pipelines still open are closed at exit.

    Example:
        >>> pipeline = ImagePipeline(array_source(x, y), [RandomFlip(), Normalize()],
        ...                          batch_size=32, seed=0, num_epochs=1)
        >>> for images, labels in pipeline:
        ...     ...
        >>> state = pipeline.get_state()   # later: ImagePipeline(...).set_state(state)
    """

    def __init__(self, source, transforms: Sequence = (), batch_size: int = 32,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 worker_count: int = 0, prefetch: int = 2, drop_remainder: bool = False,
                 *, _shard: tuple[int, int] = (0, 1)):
        what = "ImagePipeline"
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise ValueError(f"{what}: `source` must be a random-access source (with "
                             f"`__len__` and `__getitem__`), e.g. image_folder(path). "
                             f"Received: source={_describe(source)}")
        n = len(source)
        if n == 0:
            raise ValueError(f"{what}: the source is empty. Received: source={source!r}")
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not isinstance(t, (grain.transforms.Map, grain.transforms.RandomMap)):
                raise ValueError(f"{what}: `transforms` must be grain Map or RandomMap "
                                 f"transforms (Resize, RandomFlip, ...). Received: "
                                 f"transforms[{i}]={_describe(t)}")
        _check_positive_int(what, "batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
                not 0 <= seed < 2 ** 32:
            raise ValueError(f"{what}: `seed` must be an int in [0, 2**32). "
                             f"Received: seed={seed!r}")
        if num_epochs is not None:
            _check_positive_int(what, "num_epochs", num_epochs)
        for name, value in (("worker_count", worker_count), ("prefetch", prefetch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{what}: `{name}` must be an int >= 0. "
                                 f"Received: {name}={value!r}")
        index, count = _shard
        per_epoch = _epoch_batches(n, batch_size, drop_remainder, count)
        if per_epoch == 0:
            raise ValueError(f"{what}: an epoch of {n} samples gives no batch. Received: "
                             f"batch_size={batch_size}, drop_remainder={drop_remainder}, "
                             f"{count} processes")
        self.source, self.transforms = source, transforms
        self._args = dict(batch_size=int(batch_size), seed=int(seed), shuffle=bool(shuffle),
                          num_epochs=num_epochs, worker_count=int(worker_count),
                          prefetch=int(prefetch), drop_remainder=bool(drop_remainder))
        self._n, self._per_epoch = n, per_epoch
        self._total = None if num_epochs is None else num_epochs * per_epoch
        self.shard_index, self.shard_count = int(index), int(count)
        self._stream = _Batches(self._records(), n, int(batch_size), per_epoch,
                                self.shard_index, self.shard_count)
        self._position = 0
        self._live = None        # a grain iterator over the stream ...
        self._live_at = None     # ... and the position of its next batch
        self.cpu_seconds = 0.0
        self.samples_seen = 0
        self._worker_cpu: dict[int, float] = {}

    def _records(self) -> grain.MapDataset:
        records = grain.MapDataset.source(self.source).seed(self._args["seed"])
        if self._args["shuffle"]:
            records = records.shuffle()
        for t in self.transforms:
            records = (records.random_map(t) if isinstance(t, grain.transforms.RandomMap)
                       else records.map(t))
        return records

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        """Samples per batch of this shard (the global batch size over the shard count)."""
        return self._args["batch_size"] // self.shard_count

    @property
    def batches_per_epoch(self) -> int:
        return self._per_epoch

    @property
    def num_samples(self) -> int:
        """Samples per epoch of this shard."""
        b, per_epoch, count = self._args["batch_size"], self._per_epoch, self.shard_count
        last = len(_batch_rows(self._n, b, per_epoch - 1, 0, count))
        return (per_epoch - 1) * (b // count) + last

    @property
    def num_batches(self) -> int | None:
        """Batches in the whole stream (None when it repeats forever)."""
        return self._total

    @property
    def position(self) -> int:
        """Batches handed out so far."""
        return self._position

    @property
    def worker_cpu_seconds(self) -> float | None:
        """Total CPU time of the worker processes as last reported with a batch (None
        without workers)."""
        return sum(self._worker_cpu.values()) if self._args["worker_count"] else None

    # ------------------------------------------------------------------- iteration
    def _iterator(self, start: int):
        """A grain iterator over the stream from batch ``start``."""
        workers, prefetch = self._args["worker_count"], self._args["prefetch"]
        stream = self._stream[start:]
        if workers:
            _mark_absl_flags_parsed()
            stream = stream.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                              prefetch_buffer_size=0))
            return iter(stream.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=max(1, prefetch))))
        return iter(stream.to_iter_dataset(grain.ReadOptions(
            num_threads=int(prefetch > 0), prefetch_buffer_size=prefetch)))

    def _take(self, iterator) -> tuple[np.ndarray, np.ndarray]:
        images, labels, cpu, pid, process_cpu = next(iterator)
        self.cpu_seconds += cpu
        self.samples_seen += len(labels)
        if pid != os.getpid():
            self._worker_cpu[pid] = max(process_cpu, self._worker_cpu.get(pid, 0.0))
        # Batches from workers arrive in shared memory; a plain copy frees it at once.
        return tuple(a if type(a) is np.ndarray else np.array(a) for a in (images, labels))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches from the current position to the end of the stream."""
        while self._total is None or self._position < self._total:
            if self._live is None or self._live_at != self._position:
                self.close()
                self._live, self._live_at = self._iterator(self._position), self._position
                _LIVE.add(self)
            try:
                batch = self._take(self._live)
            except BaseException:
                self.close()
                raise
            self._position += 1
            self._live_at += 1
            if self._position == self._total:
                self.close()
            yield batch

    def close(self) -> None:
        """Stops the worker processes (a later iteration starts new ones)."""
        live, self._live, self._live_at = self._live, None, None
        _LIVE.discard(self)
        if live is not None:
            _close(live)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------- state
    def _fingerprint(self) -> dict:
        a = self._args
        return {"num_records": self._n, "batch_size": a["batch_size"], "seed": a["seed"],
                "shuffle": a["shuffle"], "drop_remainder": a["drop_remainder"],
                "shard": [self.shard_index, self.shard_count]}

    def get_state(self) -> dict:
        """The position, with what it depends on: a JSON-serialisable dict.

        Example:
            >>> state = pipeline.get_state()
            >>> json.dumps(state)
            '{"position": 120, "num_records": 1300, "batch_size": 64, ...}'
        """
        return {"position": self._position, **self._fingerprint()}

    def set_state(self, state: dict) -> "ImagePipeline":
        """Continues from a position :meth:`get_state` returned (under any worker count),
        on a pipeline with the same source size, batch size, seed, shuffle and shard."""
        return self._restore(state, self._fingerprint(), "ImagePipeline.set_state",
                             ": the state is from a different pipeline")

    def _restore(self, state, fingerprint: dict, who: str, differs: str,
                 advance: int = 0) -> "ImagePipeline":
        """Moves to ``state``'s position plus ``advance`` batches once every key of
        ``fingerprint`` matches ``state``'s; errors start with ``who``."""
        if not isinstance(state, dict) or not isinstance(state.get("position"), int) or \
                state["position"] < 0:
            raise ValueError(f"{who}: `state` must be a dict from get_state() with an int "
                             f"position >= 0. Received: state={_describe(state)}")
        for key, value in fingerprint.items():
            saved = state.get(key)
            if (list(saved) if isinstance(saved, (list, tuple)) else saved) != value:
                raise ValueError(f"{who}{differs}. Expected {key}={value!r}. Received: "
                                 f"{key}={saved!r}")
        self._seek(state["position"] + advance)
        return self

    def _seek(self, position: int) -> None:
        self._position = position

    # --------------------------------------------------------------------- sharding
    def shard(self, index: int, count: int) -> "ImagePipeline":
        """A pipeline (at the start of the stream) for process ``index`` of ``count``: the
        ``index``-th of ``count`` equal, contiguous slices of every global batch, the
        same records with the same random draws as in the unsharded pipeline. A last
        batch that ``count`` does not divide loses its last samples (with a warning).

        Example:
            >>> local = pipeline.shard(jax.process_index(), jax.process_count())
        """
        what = "ImagePipeline.shard"
        _check_shard(what, index, count)
        if self.shard_count != 1:
            raise ValueError(f"{what}: this pipeline is already a shard ({self.shard_index} "
                             f"of {self.shard_count}); shard the unsharded pipeline. "
                             f"Received: index={index}, count={count}")
        b = self._args["batch_size"]
        if b % count:
            raise ValueError(f"{what}: each of the {count} processes takes an equal slice "
                             f"of every batch, so the batch size must be divisible by the "
                             f"number of processes. Received: batch_size={b}, count={count}")
        rest = 0 if self._args["drop_remainder"] else self._n % b
        if rest % count:
            warnings.warn(f"{what}: the last batch of an epoch ({rest} samples) is not "
                          f"divisible by count={count} processes; its last {rest % count} "
                          f"samples are left out of every epoch so that all processes get "
                          f"batches of one size.", stacklevel=2)
        return ImagePipeline(self.source, self.transforms, **self._args,
                             _shard=(int(index), int(count)))

    # ---------------------------------------------------------------------- adapter
    def as_data_adapter(self, *, steps_per_epoch=None, class_weight=None,
                        what="fit") -> "ImagePipelineAdapter":
        """The :class:`ImagePipelineAdapter` that ``fit`` / ``evaluate`` / ``predict``
        read this pipeline through (called by ``get_data_adapter``)."""
        return ImagePipelineAdapter(self, steps_per_epoch=steps_per_epoch,
                                    class_weight=class_weight, what=what)

    def __repr__(self):
        a = self._args
        return (f"ImagePipeline({self.source!r}, {len(self.transforms)} transforms, "
                f"batch_size={a['batch_size']}, seed={a['seed']}, shuffle={a['shuffle']}, "
                f"num_epochs={a['num_epochs']}, worker_count={a['worker_count']}, "
                f"position={self._position})")


class ImagePipelineAdapter(_BatchSourceAdapter):
    """An :class:`ImagePipeline` seen through the adapter protocol.

    Every epoch of ``fit`` takes the next ``batches_per_epoch`` batches (at most
    ``steps_per_epoch``) of the pipeline's stream from its position, so a restored
    pipeline resumes training where it stopped; when a finite stream ends,
    :attr:`exhausted` becomes True. ``evaluate``, ``predict`` and validation read whole
    epochs: each call starts at the next epoch boundary, so a pipeline without shuffle or
    random transforms gives the same batches every time (keep ``num_epochs=None`` for a
    pipeline read more than once). The workers live on between epochs. ``fit``'s
    ``shuffle`` and ``batch_size`` do not apply (the pipeline has its own); :meth:`shard`
    shards the pipeline, so each process prepares only its slice.
    """

    _kind = "an ImagePipeline"

    def __init__(self, pipeline: ImagePipeline, *, steps_per_epoch=None, class_weight=None,
                 what="fit"):
        self._what = what
        if steps_per_epoch is not None:
            _check_positive_int(what, "steps_per_epoch", steps_per_epoch)
        self.pipeline = pipeline
        self._steps = steps_per_epoch
        self._class_weight = (None if class_weight is None
                              else _clean_class_weight(class_weight, what))
        self.exhausted = False
        self._resumed = 0

    shard_index = property(lambda self: self.pipeline.shard_index)
    shard_count = property(lambda self: self.pipeline.shard_count)

    @property
    def num_batches(self) -> int:
        per_epoch = self.pipeline.batches_per_epoch
        return per_epoch if self._steps is None else min(self._steps, per_epoch)

    @property
    def batch_size(self) -> int:
        return self.pipeline.batch_size

    @property
    def num_samples(self) -> int:
        return self.pipeline.num_samples

    def batches(self, rng=None) -> Iterator[tuple]:
        return self._epoch()

    def _epoch(self) -> Iterator[tuple]:
        pipeline, wanted = self.pipeline, self.num_batches - self._resumed
        self._resumed = 0
        if self._what != "fit":
            pipeline._seek(-(-pipeline.position // pipeline.batches_per_epoch)
                           * pipeline.batches_per_epoch)
        source = iter(pipeline)
        count = 0
        try:
            while count < wanted:
                batch = next(source, None)
                if batch is None:
                    self.exhausted = True
                    break
                count += 1
                yield self._standardize(batch)
        finally:
            source.close()

    def shard(self, index, count) -> "ImagePipelineAdapter":
        _check_shard(self._what, index, count)
        if count == 1 and self.shard_count == 1:
            return self
        return ImagePipelineAdapter(self.pipeline.shard(index, count),
                                    steps_per_epoch=self._steps,
                                    class_weight=self._class_weight, what=self._what)

    def stream_state(self) -> dict:
        """The pipeline's position (global batches handed out, the same on every process)
        and what it depends on, less the shard: a backup resumes under another process
        count."""
        state = self.pipeline.get_state()
        state.pop("shard")
        return state

    def seek_stream(self, state, skip, who) -> int:
        fingerprint = self.pipeline._fingerprint()
        fingerprint.pop("shard")
        self.pipeline._restore(state, fingerprint, who, " was taken on another "
                               "ImagePipeline: its position does not apply to this one",
                               advance=int(skip))
        self._resumed = int(skip)  # the next epoch gives only the rest of the batches
        return 0

    def on_epoch_end(self) -> None:
        pipeline = self.pipeline
        if pipeline.num_batches is not None and pipeline.position >= pipeline.num_batches:
            pipeline.close()


# ---------------------------------------------------------------- synthetic image sets

_SHAPES = ("ellipse", "rectangle", "triangle", "cross")


def _draw_sample(rng: np.random.Generator, label: int, classes: int,
                 size: tuple[int, int]) -> Image.Image:
    """An image of class ``label``: a shape of the class's kind and hue, at a random
    place and scale, on a noisy pale background."""
    height, width = size
    background = rng.integers(150, 230, 3)
    noise = rng.normal(0.0, 12.0, (height, width, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    hue = np.array([math.cos(2 * math.pi * (label / classes + k / 3)) for k in range(3)])
    colour = tuple(int(v) for v in np.clip(128 + 110 * hue + rng.normal(0, 10, 3), 0, 255))
    s = rng.uniform(0.35, 0.6) * min(height, width)
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    draw = ImageDraw.Draw(image)
    kind = _SHAPES[label % len(_SHAPES)]
    if kind == "ellipse":
        draw.ellipse(box, fill=colour)
    elif kind == "rectangle":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    else:
        bar = s / 6
        draw.rectangle((box[0], cy - bar, box[2], cy + bar), fill=colour)
        draw.rectangle((cx - bar, box[1], cx + bar, box[3]), fill=colour)
    return image


def make_synthetic_image_folder(path, classes: int = 3, per_class: int = 20,
                                size=(64, 64), seed: int = 0,
                                formats: Sequence[str] = ("png", "jpeg")) -> Path:
    """Writes a small image-folder data set a small CNN can learn: ``path/class_<k>/``
    holds ``per_class`` images of ``size`` (height, width), each a shape whose kind and
    colour depend on the class, at a random place and scale on a noisy background.
    Files take the ``formats`` in turn ("png", "jpeg"). Returns ``Path(path)``.

    Example:
        >>> root = make_synthetic_image_folder("/tmp/shapes", classes=4, per_class=50)
        >>> image_folder(root).class_names
        ['class_0', 'class_1', 'class_2', 'class_3']
    """
    what = "make_synthetic_image_folder"
    _check_positive_int(what, "classes", classes)
    _check_positive_int(what, "per_class", per_class)
    size = _pair(what, "size", size)
    suffixes = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}
    if isinstance(formats, str) or not formats or any(f not in suffixes for f in formats):
        raise ValueError(f"{what}: `formats` must be a non-empty sequence of \"png\" and "
                         f"\"jpeg\". Received: formats={formats!r}")
    root = Path(path)
    rng = np.random.default_rng(seed)
    digits = len(str(classes - 1))
    for label in range(classes):
        folder = root / f"class_{label:0{digits}d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = _draw_sample(rng, label, classes, size)
            fmt = formats[i % len(formats)]
            options = {"quality": 92} if suffixes[fmt] == ".jpg" else {}
            image.save(folder / f"{i:05d}{suffixes[fmt]}", **options)
    return root
