"""The learned world model (torch, no ROS).

Encoder, action-conditioned predictor, probes, losses, and safetensors checkpoints.
"""
from ami_ros.model.checkpoint import (CheckpointError, CheckpointNotFoundError, load_checkpoint,
                                      save_checkpoint)
from ami_ros.model.config import ConfigError, ModelConfig, RunConfig, load_run_config
from ami_ros.model.world_model import WorldModel

__all__ = ['CheckpointError', 'CheckpointNotFoundError', 'ConfigError', 'ModelConfig',
           'RunConfig', 'WorldModel', 'load_checkpoint', 'load_run_config', 'save_checkpoint']
