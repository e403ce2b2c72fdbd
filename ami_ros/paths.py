"""Where the package's share files (urdf/, config/, models/, launch/) are, installed or not."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def share_dir() -> Path:
    """share/ami_ros from the ament index, or the source tree when the package is not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('ami_ros'))
    except (ImportError, LookupError, OSError, ValueError):
        return Path(__file__).resolve().parent.parent


def urdf_path(name: str) -> Path:
    """Path of ``urdf/<name>.urdf``."""
    return share_dir() / 'urdf' / f'{name}.urdf'


def config_path(name: str) -> Path:
    return share_dir() / 'config' / name
