"""Perceive: a camera frame (and the joint states measured with it) -> the model's state.

Decode (``sensor_msgs/Image`` fields, any supported encoding), prepare exactly as the training
data was prepared (:func:`ami_ros.data.images.prepare_image`), encode, and for a model with
proprioception put the measured joints into the state. No ROS import: the ``perception`` node
and the :class:`~ami_ros.agent.Agent` both call this.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ami_ros.data.images import decode_image, prepare_image


def check_image(image, what: str = 'image') -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or float in [0, 1]; ValueError naming what is wrong.

    Non-finite float pixels are returned as they are: the caller decides (reject or raise).
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise ValueError(f'{what} must be an (H, W, 3) RGB array with H, W >= 8, got shape '
                         f'{a.shape}')
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f'{what} must be uint8 (0-255) or float (0-1), got dtype {a.dtype}')
    return a


def model_image_size(model) -> Optional[int]:
    """Side of the model's square input image (a WorldModel or an inference backend).

    None for a model that takes frames of any size.
    """
    size = getattr(model, 'image_size', None)
    if size is None:
        size = getattr(getattr(model, 'config', None), 'image_size', None)
    return None if size is None else int(size)


class Perceiver:
    """The perceive stage around a model with the world model's duck type."""

    def __init__(self, model, device: Optional[torch.device] = None):
        self.model = model
        self.device = torch.device(device) if device is not None else getattr(
            model, 'device', torch.device('cpu'))
        self.image_size = model_image_size(model)

    def decode(self, encoding: str, height: int, width: int, step: int, bigendian: int,
               data) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an image message's fields; ImageDecodeError if it cannot be."""
        return decode_image(encoding, height, width, step, bigendian, data)

    def prepare(self, image) -> np.ndarray:
        """The model's input from an (H, W, 3) frame: uint8 frames resized as in training."""
        a = check_image(image)
        if a.dtype == np.uint8 and self.image_size is not None:
            return prepare_image(a, self.image_size)
        return a

    def encode(self, image, joints=None) -> Optional[torch.Tensor]:
        """Return the (D,) state of one frame (with its measured joint positions, if any).

        None if the frame or its latent has NaN/inf; ValueError for a malformed frame or joints.
        """
        a = self.prepare(image)
        if not np.isfinite(a).all():
            return None
        if a.dtype != np.uint8:
            a = np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)
        with torch.no_grad():
            z = self.model.encode(torch.as_tensor(a, device=self.device)[None])[0]  # (D,)
        if joints is not None:
            z = self.with_joints(z, joints)
        return z.detach() if bool(torch.isfinite(z).all()) else None

    def with_joints(self, z: torch.Tensor, joints) -> torch.Tensor:
        """Return the state z (D,) with its joint part from measured positions (A,).

        For a model with proprioception (others: z unchanged). ValueError for joints of the
        wrong size or NaN.
        """
        if not getattr(self.model, 'has_proprio', False):
            return z
        q = np.asarray(joints, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != int(self.model.action_dim) or not np.isfinite(q).all():
            raise ValueError(f'joints must be {self.model.action_dim} finite numbers, '
                             f'got {q.ravel().tolist()}')
        z = torch.as_tensor(z, device=self.device)
        with torch.no_grad():
            return self.model.with_joints(z[None], torch.as_tensor(q, device=z.device))[0]
