"""``sensor_msgs/Image`` payloads <-> RGB uint8 arrays (no ROS import; the nodes reuse this).

:func:`decode_image` takes the fields of an Image message (any common encoding, padded rows,
either byte order) and returns an (H, W, 3) uint8 RGB array; :func:`encode_rgb8` goes back.
Three-channel encodings with no colour order in their name (``8UC3``) are read as BGR and
four-channel ones (``8UC4``) as BGRA, the OpenCV convention that cv_bridge also applies.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

MAX_SIDE = 8192
"""Largest accepted image width or height: anything bigger is a corrupt header, not a camera."""


class ImageDecodeError(ValueError):
    """An Image message that cannot be turned into an RGB array."""


class _Layout(NamedTuple):
    channels: int
    bytes_per_channel: int
    order: str  # how the channels map to RGB: 'rgb', 'bgr', 'rgba', 'bgra', 'mono', 'uyvy', 'yuyv'


_LAYOUTS = {
    'rgb8': _Layout(3, 1, 'rgb'),
    'bgr8': _Layout(3, 1, 'bgr'),
    'rgba8': _Layout(4, 1, 'rgba'),
    'bgra8': _Layout(4, 1, 'bgra'),
    'rgb16': _Layout(3, 2, 'rgb'),
    'bgr16': _Layout(3, 2, 'bgr'),
    'rgba16': _Layout(4, 2, 'rgba'),
    'bgra16': _Layout(4, 2, 'bgra'),
    'mono8': _Layout(1, 1, 'mono'),
    'mono16': _Layout(1, 2, 'mono'),
    '8UC1': _Layout(1, 1, 'mono'),
    '8UC3': _Layout(3, 1, 'bgr'),
    '8UC4': _Layout(4, 1, 'bgra'),
    '16UC1': _Layout(1, 2, 'mono'),
    # ROS 'yuv422' is UYVY byte order; 'yuv422_yuy2' is YUYV. Two pixels share 4 bytes.
    'yuv422': _Layout(2, 1, 'uyvy'),
    'uyvy': _Layout(2, 1, 'uyvy'),
    'yuv422_yuy2': _Layout(2, 1, 'yuyv'),
    'yuyv': _Layout(2, 1, 'yuyv'),
}

SUPPORTED_ENCODINGS = tuple(_LAYOUTS)
"""Every encoding :func:`decode_image` accepts."""


def _as_bytes(data) -> np.ndarray:
    """A flat uint8 view of the message payload (bytes, bytearray, memoryview, list or array)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else \
            np.frombuffer(data.tobytes(), dtype=np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    # rclpy hands `data` over as array.array('B') or a list of ints
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: int | bool,
                 data) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into a new (H, W, 3) uint8 RGB array.

    16-bit encodings are scaled linearly to 8 bits (the high byte); alpha is dropped; mono is
    replicated to three channels; YUV 4:2:2 uses the BT.601 conversion. Raises
    :class:`ImageDecodeError` naming the problem for unsupported encodings, zero or absurd
    sizes, a ``step`` shorter than a row, or ``data`` shorter than ``step * height``.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(f'unsupported image encoding {encoding!r}; supported: '
                               f'{", ".join(SUPPORTED_ENCODINGS)}')
    height, width, step = int(height), int(width), int(step)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ImageDecodeError(f'{encoding} image size {width}x{height} (WxH) is not in '
                               f'[1, {MAX_SIDE}]')
    row_bytes = width * layout.channels * layout.bytes_per_channel
    if step < row_bytes:
        raise ImageDecodeError(f'{encoding} image {width}x{height}: step {step} is shorter than '
                               f'one row ({row_bytes} bytes)')
    if layout.order in ('uyvy', 'yuyv') and width % 2:
        raise ImageDecodeError(f'{encoding} image needs an even width (two pixels share one '
                               f'U/V pair), got width {width}')
    buf = _as_bytes(data)
    if buf.size < step * height:
        raise ImageDecodeError(f'{encoding} image {width}x{height} step {step}: data has '
                               f'{buf.size} bytes, expected at least {step * height}')
    # (H, step) -> drop the row padding -> (H, row_bytes)
    rows = buf[:step * height].reshape(height, step)[:, :row_bytes]

    if layout.order in ('uyvy', 'yuyv'):
        packed = np.ascontiguousarray(rows).reshape(height, width, 2)
        code = cv2.COLOR_YUV2RGB_UYVY if layout.order == 'uyvy' else cv2.COLOR_YUV2RGB_YUY2
        return cv2.cvtColor(packed, code)

    if layout.bytes_per_channel == 2:
        dtype = np.dtype('>u2' if is_bigendian else '<u2')
        pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, layout.channels)
        pixels = (pixels >> 8).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, layout.channels)

    if layout.order == 'mono':
        return np.repeat(pixels, 3, axis=2)
    if layout.order in ('rgb', 'rgba'):
        return np.ascontiguousarray(pixels[:, :, :3])
    return np.ascontiguousarray(pixels[:, :, 2::-1])  # bgr / bgra -> rgb


def encode_rgb8(img: np.ndarray) -> tuple[str, int, bytes]:
    """(encoding, step, data) of an (H, W, 3) uint8 RGB array, unpadded rows."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageDecodeError(f'encode_rgb8 needs an (H, W, 3) uint8 array, got shape '
                               f'{arr.shape} dtype {arr.dtype}')
    h, w = arr.shape[:2]
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ImageDecodeError(f'image size {w}x{h} (WxH) is not in [1, {MAX_SIDE}]')
    return 'rgb8', w * 3, np.ascontiguousarray(arr).tobytes()


_INTERPOLATION = {'nearest': cv2.INTER_NEAREST, 'area': cv2.INTER_AREA}


def resize_image(img: np.ndarray, size, interpolation: str = 'area') -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size`` (an int for square, or (height, width)).

    ``interpolation`` is ``'area'`` (averages pixels: the right choice for shrinking camera
    frames) or ``'nearest'`` (keeps exact pixel values). Returns the input unchanged when it
    already has that size.
    """
    if interpolation not in _INTERPOLATION:
        raise ValueError(f'interpolation must be one of {sorted(_INTERPOLATION)}, '
                         f'got {interpolation!r}')
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ValueError(f'resize target {size!r} is not in [1, {MAX_SIDE}]')
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=_INTERPOLATION[interpolation])


def prepare_image(img: np.ndarray, size, interpolation: str = 'area') -> np.ndarray:
    """A camera frame as the model sees it: the whole (H, W, 3) uint8 frame resized to ``size``.

    The one image preparation of the project: training data (:func:`ami_ros.data.bag.read_bag`
    with ``image_size``) and perception (:class:`ami_ros.agent.Perceiver`) both call it, so a
    camera is seen at run time as it was in training. A non-square frame is squashed to the
    square model input, not cropped: nothing in the frame is lost, and the end-effector estimate
    from a 640x480 camera is better that way (median 8.9 cm squashed vs 13.0 cm centre-cropped).
    ``size`` is a side, or (height, width); ``interpolation`` as :func:`resize_image`.
    """
    return np.ascontiguousarray(resize_image(img, size, interpolation))
