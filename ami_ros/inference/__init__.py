"""Inference serving of the world model: one interface over PyTorch, ONNX Runtime and TensorRT.

    backend = make_backend('tensorrt', 'arm_reach',
                           BackendConfig(fallback=('onnxruntime', 'torch')))
    z = backend.encode(images)                     # (B, D)
    pred = backend.rollout(z_hist, actions)        # (B, H, D), one graph call
    backend.info()                                 # for /diagnostics

onnxruntime and tensorrt are imported only when their backend is made.
"""
from ami_ros.inference.base import (BACKENDS, BackendConfig, BackendUnavailable,
                                    InferenceBackend, ModelSpec, cache_root, make_backend,
                                    model_sha256)

__all__ = ['BACKENDS', 'BackendConfig', 'BackendUnavailable', 'InferenceBackend', 'ModelSpec',
           'cache_root', 'make_backend', 'model_sha256']
