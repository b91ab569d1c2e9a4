"""Image ops (``keras.ops.image``) on ``jax.image`` and ``jax.scipy.ndimage``.

Images are rank 3 (one image) or rank 4 (a batch), channels_last unless
``data_format="channels_first"``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybridnet.ops.core import convert_to_tensor, float_dtype, standardize_dtype
from hybridnet.ops.nn import _data_format, conv

_t = convert_to_tensor
_RESIZE_METHODS = ("bilinear", "nearest", "lanczos3", "lanczos5", "bicubic")
_SCALE_METHODS = ("linear", "bilinear", "trilinear", "cubic", "bicubic", "tricubic", "lanczos3", "lanczos5")
_FILL_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")


def _images(images, op):
    images = _t(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"{op}: images must be rank 3 (one image) or rank 4 (a batch). "
                         f"Received: images.shape={images.shape}")
    return images


def _hw_axes(images, data_format):
    return (images.ndim - 3, images.ndim - 2) if data_format == "channels_last" else (images.ndim - 2,
                                                                                      images.ndim - 1)


def resize(images, size, interpolation="bilinear", antialias=False, crop_to_aspect_ratio=False,
           pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0, data_format=None):
    """Resizes images to ``size = (height, width)``.

    ``crop_to_aspect_ratio`` first crops the largest centred box of the target aspect ratio;
    ``pad_to_aspect_ratio`` first pads with ``fill_value`` to it.
    """
    data_format = _data_format(data_format, "resize")
    if interpolation not in _RESIZE_METHODS:
        raise ValueError(f"resize: `interpolation` must be one of {_RESIZE_METHODS}. "
                         f"Received: interpolation={interpolation!r}")
    if fill_mode != "constant":
        raise ValueError(f"resize: only fill_mode='constant' is supported. Received: fill_mode={fill_mode!r}")
    if pad_to_aspect_ratio and crop_to_aspect_ratio:
        raise ValueError("resize: only one of `pad_to_aspect_ratio` and `crop_to_aspect_ratio` can be True.")
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"resize: `size` must be two positive ints (height, width). Received: size={size}")
    images = _images(images, "resize")
    th, tw = size
    ha, wa = _hw_axes(images, data_format)
    h, w = images.shape[ha], images.shape[wa]
    if crop_to_aspect_ratio:
        ch = max(min(h, int(float(w * th) / tw)), 1)
        cw = max(min(w, int(float(h * tw) / th)), 1)
        images = jax.lax.slice_in_dim(images, int(float(h - ch) / 2), int(float(h - ch) / 2) + ch, axis=ha)
        images = jax.lax.slice_in_dim(images, int(float(w - cw) / 2), int(float(w - cw) / 2) + cw, axis=wa)
    elif pad_to_aspect_ratio:
        ph, pw = max(h, int(float(w * th) / tw)), max(w, int(float(h * tw) / th))
        top, left = int(float(ph - h) / 2), int(float(pw - w) / 2)
        pads = [(0, 0)] * images.ndim
        if top > 0:
            pads[ha] = (top, top)
        elif left > 0:
            pads[wa] = (left, left)
        images = jnp.pad(images, pads, constant_values=jnp.asarray(fill_value, images.dtype))
    shape = list(images.shape)
    shape[ha], shape[wa] = th, tw
    return jax.image.resize(images, tuple(shape), method=interpolation, antialias=antialias)


def scale_and_translate(images, output_shape, scale, translation, spatial_dims, method, antialias=True):
    """Scales and translates ``images`` over ``spatial_dims`` (``jax.image.scale_and_translate``)."""
    if method not in _SCALE_METHODS:
        raise ValueError(f"scale_and_translate: `method` must be one of {_SCALE_METHODS}. Received: method={method!r}")
    return jax.image.scale_and_translate(_t(images), output_shape, spatial_dims, _t(scale), _t(translation),
                                         method, antialias)


def rgb_to_grayscale(images, data_format=None):
    """Converts RGB images to one-channel grayscale (ITU-R 601 weights)."""
    data_format = _data_format(data_format, "rgb_to_grayscale")
    images = _images(images, "rgb_to_grayscale")
    axis = -1 if data_format == "channels_last" else -3
    if images.shape[axis] not in (1, 3):
        raise ValueError(f"rgb_to_grayscale: images must have 3 (RGB) or 1 channels. "
                         f"Received: images.shape={images.shape}")
    if images.shape[axis] == 1:
        return images
    orig = images.dtype
    images = images.astype(float_dtype(orig))
    weights = jnp.asarray([0.2989, 0.5870, 0.1140], dtype=images.dtype)
    return jnp.expand_dims(jnp.tensordot(images, weights, axes=(axis, -1)), axis).astype(orig)


def _float_images(images, op):
    images = _images(images, op)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{op}: images must be floats. Received: images.dtype={standardize_dtype(images.dtype)}")
    return images


def rgb_to_hsv(images, data_format=None):
    """Converts float RGB images in ``[0, 1]`` to HSV."""
    data_format = _data_format(data_format, "rgb_to_hsv")
    images = _float_images(images, "rgb_to_hsv")
    axis = -1 if data_format == "channels_last" else -3
    images = jnp.where(jnp.abs(images) < jnp.finfo(images.dtype).eps, 0.0, images)
    r, g, b = (jnp.squeeze(c, axis) for c in jnp.split(images, 3, axis))
    value = jnp.maximum(jnp.maximum(r, g), b)
    range_ = value - jnp.minimum(jnp.minimum(r, g), b)
    safe_range = jnp.where(range_ > 0, range_, 1.0)
    saturation = jnp.where(value > 0, range_ / jnp.where(value > 0, value, 1.0), 0.0)
    norm = 1.0 / (6.0 * safe_range)
    hue = jnp.where(value == g, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
    hue = jnp.where(value == r, norm * (g - b), hue)
    hue = jnp.where(range_ > 0, hue, 0.0) + (hue < 0.0).astype(hue.dtype)
    return jnp.stack((hue, saturation, value), axis=axis)


def hsv_to_rgb(images, data_format=None):
    """Converts float HSV images to RGB."""
    data_format = _data_format(data_format, "hsv_to_rgb")
    images = _float_images(images, "hsv_to_rgb")
    axis = -1 if data_format == "channels_last" else -3
    h, s, v = (jnp.squeeze(c, axis) for c in jnp.split(images, 3, axis))
    dh = jnp.mod(h, 1.0) * 6.0
    dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
    db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
    return jnp.stack([v * (1.0 - s + s * d) for d in (dr, dg, db)], axis=axis)


def map_coordinates(inputs, coordinates, order, fill_mode="constant", fill_value=0):
    """Samples ``inputs`` at ``coordinates`` (one row per input axis) with spline ``order`` 0 or 1."""
    inputs, coordinates = _t(inputs), _t(coordinates)
    if coordinates.ndim < 2 or coordinates.shape[0] != inputs.ndim:
        raise ValueError("map_coordinates: `coordinates` must be at least rank 2 with one row per input axis. "
                         f"Received: inputs.shape={inputs.shape}, coordinates.shape={coordinates.shape}")
    if fill_mode not in _FILL_MODES:
        raise ValueError(f"map_coordinates: `fill_mode` must be one of {_FILL_MODES}. "
                         f"Received: fill_mode={fill_mode!r}")
    if order not in (0, 1):
        raise ValueError(f"map_coordinates: `order` must be 0 or 1. Received: order={order!r}")
    return jax.scipy.ndimage.map_coordinates(inputs, coordinates, order, fill_mode, fill_value)


def _box(images, data_format, a, b, c, d, target_h, target_w, op, what):
    # Resolves the four margins (top, left, bottom, right) from the given ones and the target size.
    ha, wa = _hw_axes(images, data_format)
    h, w = images.shape[ha], images.shape[wa]
    if [a, c, target_h].count(None) != 1 or [b, d, target_w].count(None) != 1:
        raise ValueError(f"{op}: give exactly two of top_{what}, bottom_{what}, target_height and exactly two of "
                         f"left_{what}, right_{what}, target_width. Received: top_{what}={a}, bottom_{what}={c}, "
                         f"target_height={target_h}, left_{what}={b}, right_{what}={d}, target_width={target_w}")
    sign = 1 if what == "padding" else -1
    if a is None:
        a = sign * (target_h - h) - c
    if c is None:
        c = sign * (target_h - h) - a
    if b is None:
        b = sign * (target_w - w) - d
    if d is None:
        d = sign * (target_w - w) - b
    for name, v in ((f"top_{what}", a), (f"left_{what}", b), (f"bottom_{what}", c), (f"right_{what}", d)):
        if v < 0:
            raise ValueError(f"{op}: {name} must be >= 0. Received: {name}={v} for images.shape={images.shape}")
    return ha, wa, h, w, a, b, c, d


def pad_images(images, top_padding=None, left_padding=None, bottom_padding=None, right_padding=None,
               target_height=None, target_width=None, data_format=None):
    """Zero-pads images to the given margins or target size."""
    data_format = _data_format(data_format, "pad_images")
    images = _images(images, "pad_images")
    ha, wa, _, _, top, left, bottom, right = _box(images, data_format, top_padding, left_padding, bottom_padding,
                                                  right_padding, target_height, target_width, "pad_images",
                                                  "padding")
    pads = [(0, 0)] * images.ndim
    pads[ha], pads[wa] = (top, bottom), (left, right)
    return jnp.pad(images, pads)


def crop_images(images, top_cropping=None, left_cropping=None, bottom_cropping=None, right_cropping=None,
                target_height=None, target_width=None, data_format=None):
    """Crops images by the given margins or to the target size."""
    data_format = _data_format(data_format, "crop_images")
    images = _images(images, "crop_images")
    ha, wa, h, w, top, left, bottom, right = _box(images, data_format, top_cropping, left_cropping,
                                                  bottom_cropping, right_cropping, target_height, target_width,
                                                  "crop_images", "cropping")
    images = jax.lax.slice_in_dim(images, top, h - bottom, axis=ha)
    return jax.lax.slice_in_dim(images, left, w - right, axis=wa)


def extract_patches(images, size, strides=None, dilation_rate=1, padding="valid", data_format=None):
    """Extracts 2-D patches of ``size`` into the channel axis: ``(..., rows, cols, ph*pw*C)``."""
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"extract_patches: `size` must be an int or a tuple of 2 ints. Received: size={size!r}")
    data_format = _data_format(data_format, "extract_patches")
    images = _images(images, "extract_patches")
    channels = images.shape[-1] if data_format == "channels_last" else images.shape[-3]
    out_dim = size[0] * size[1] * channels
    kernel = jnp.reshape(jnp.eye(out_dim, dtype=images.dtype), (size[0], size[1], channels, out_dim))
    unbatched = images.ndim == 3
    if unbatched:
        images = images[None]
    patches = conv(images, kernel, strides=strides or size, padding=padding, data_format=data_format,
                   dilation_rate=dilation_rate)
    return patches[0] if unbatched else patches


__all__ = sorted(n for n, v in list(globals().items())
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == __name__)
