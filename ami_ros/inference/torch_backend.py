"""PyTorch eager backend: the WorldModel itself, on the configured device, without autograd."""
from __future__ import annotations

import copy
from typing import Optional

import torch

from ami_ros.inference.base import (BackendConfig, BackendUnavailable, InferenceBackend,
                                    ModelSource, ModelSpec, resolve_device)


class TorchBackend(InferenceBackend):
    """Runs ``WorldModel`` eagerly without autograd; the reference for parity.

    ``torch.no_grad`` rather than ``inference_mode``: inference tensors cannot be modified in
    place outside the mode, which callers (planners, filters) may do; the cost is the same for
    these models (measured with ``ami-ros bench``).
    """

    name = 'torch'

    def __init__(self, source: ModelSource, config: BackendConfig):
        if not source.available:
            raise BackendUnavailable('the torch backend needs a checkpoint, none was given')
        device = resolve_device(config.device)
        # a private copy: the caller's model keeps its device, mode and weights
        model = copy.deepcopy(source.model()).to(device)
        if int(config.num_threads) > 0 and device.type == 'cpu':
            torch.set_num_threads(int(config.num_threads))  # process-wide: torch has one pool
        self.model = model.eval()
        super().__init__(ModelSpec.of(model), device, source.sha256(), config)
        self.checkpoint = source.describe()

    def _info(self) -> dict:
        return {'checkpoint': self.checkpoint, 'torch': torch.__version__,
                'threads': torch.get_num_threads()}

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)

    @torch.no_grad()
    def _rollout(self, z_hist: torch.Tensor, actions: torch.Tensor,
                 past: Optional[torch.Tensor]) -> torch.Tensor:
        return self.model.rollout(z_hist, actions, past_actions=past)

    @torch.no_grad()
    def _probe(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.probe(z)
