"""Cache of TensorRT engines, keyed by everything that makes an engine valid (pure Python).

A serialized TensorRT engine only runs on the GPU model and TensorRT version it was built with,
and only means what its ONNX graph, precision and optimisation profiles say. The cache key is
exactly that tuple; the engine file is named by the key's digest, so an engine is found only
when every component matches, and one built under another key is reported as *stale* (with
what changed) and rebuilt. Engines live under ``<cache root>/engines`` (``$AMI_ROS_CACHE`` or
``~/.cache/ami_ros``), per user, never at a fixed shared path; writes are atomic (temporary
file + rename), and each engine's record holds its own sha256 so a truncated file is rebuilt
rather than loaded.

Layout::

    <root>/engines/<name>-<digest[:20]>.engine   the serialized engine
    <root>/engines/<name>-<digest[:20]>.json     {"key": {...}, "engine_sha256": ..., ...}
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from ami_ros.inference.base import cache_root
from ami_ros.model.checkpoint import sha256_file

KEY_VERSION = 1
"""Bumped when the key's meaning changes, so older records never match."""
_NAME = re.compile(r'^[A-Za-z0-9_.-]{1,100}$')

Shape = tuple[int, ...]
Profile = tuple[tuple[str, Shape, Shape, Shape], ...]
"""One optimisation profile: (input name, min shape, opt shape, max shape) per input."""


def _canon_profiles(profiles) -> tuple[Profile, ...]:
    out = []
    for p in profiles:
        entries = []
        for entry in p:
            name, lo, opt, hi = entry
            entries.append((str(name), tuple(int(v) for v in lo), tuple(int(v) for v in opt),
                            tuple(int(v) for v in hi)))
        out.append(tuple(sorted(entries)))
    return tuple(out)


@dataclass(frozen=True)
class EngineKey:
    """What a TensorRT engine depends on; equal keys = interchangeable engines."""

    onnx_sha256: str
    """sha256 of the ONNX file the engine was built from (so, of the weights and horizon)."""
    gpu: str
    """GPU name as CUDA reports it, e.g. 'NVIDIA H100 80GB HBM3' or 'Orin'."""
    compute_capability: str
    """'major.minor', e.g. '9.0' (H100), '8.7' (Jetson Orin)."""
    tensorrt: str
    """TensorRT version string, e.g. '10.3.0'."""
    precision: str
    """'fp16' or 'fp32'."""
    profiles: tuple[Profile, ...]
    """Optimisation profiles in index order."""

    def __post_init__(self):
        object.__setattr__(self, 'profiles', _canon_profiles(self.profiles))
        for name in ('onnx_sha256', 'gpu', 'compute_capability', 'tensorrt', 'precision'):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f'EngineKey.{name} must be a non-empty string, '
                                 f'got {getattr(self, name)!r}')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['profiles'] = [[[n, list(lo), list(opt), list(hi)] for n, lo, opt, hi in p]
                         for p in self.profiles]
        d['key_version'] = KEY_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict) -> 'EngineKey':
        if data.get('key_version') != KEY_VERSION:
            raise ValueError(f'key_version {data.get("key_version")!r} is not {KEY_VERSION}')
        return cls(str(data['onnx_sha256']), str(data['gpu']), str(data['compute_capability']),
                   str(data['tensorrt']), str(data['precision']), tuple(data['profiles']))

    def digest(self) -> str:
        """sha256 of the canonical JSON of the key."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: 'EngineKey') -> list[str]:
        """What differs from ``other`` (the cached one), as 'field: cached -> wanted'."""
        out = []
        for field in ('onnx_sha256', 'gpu', 'compute_capability', 'tensorrt', 'precision'):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                if field == 'onnx_sha256':
                    mine, theirs = mine[:12], theirs[:12]
                out.append(f'{field} {theirs} -> {mine}')
        if self.profiles != other.profiles:
            out.append(f'profiles {_brief(other.profiles)} -> {_brief(self.profiles)}')
        return out


def _brief(profiles) -> str:
    return '[' + ', '.join('/'.join(f'{lo[0]}..{hi[0]}' for _, lo, _, hi in p[:1])
                           for p in profiles) + '] (batch ranges)'


@dataclass
class CacheDecision:
    """The outcome of a lookup: use ``path``, or (re)build it, and why."""

    path: Path
    """Where the engine is, or is to be written."""
    rebuild: bool
    """True when no valid engine for the key is cached."""
    reason: str
    """One line for the log: 'cached engine matches', 'no cached engine', 'stale engine: ...',
    'cached engine is corrupt: ...'."""


def engine_dir(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """``<cache root>/engines``; see :func:`ami_ros.inference.base.cache_root`."""
    return cache_root(cache_dir) / 'engines'


class EngineCache:
    """Engines for several models, GPUs and TensorRT versions side by side in one directory."""

    def __init__(self, cache_dir: Optional[Union[str, Path]] = None):
        self.directory = engine_dir(cache_dir)

    def paths(self, name: str, key: EngineKey) -> tuple[Path, Path]:
        """(engine file, record file) for the graph called ``name`` under ``key``."""
        if not _NAME.match(name):
            raise ValueError(f'engine name must be 1-100 letters, digits, "_", "." or "-", '
                             f'got {name!r}')
        stem = f'{name}-{key.digest()[:20]}'
        return self.directory / f'{stem}.engine', self.directory / f'{stem}.json'

    def _record(self, path: Path) -> Optional[dict]:
        try:
            data = json.loads(path.read_text())
            data['_key'] = EngineKey.from_dict(data['key'])
            return data
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                ValueError):
            return None

    def lookup(self, name: str, key: EngineKey) -> CacheDecision:
        """Decide whether the engine for ``key`` can be loaded or must be (re)built."""
        engine, record = self.paths(name, key)
        if engine.is_file() and record.is_file():
            data = self._record(record)
            if data is None or data['_key'] != key:
                return CacheDecision(engine, True, f'cached engine record {record} is unreadable '
                                                   f'or does not match its name')
            if sha256_file(engine) != data.get('engine_sha256'):
                return CacheDecision(engine, True, f'cached engine {engine} is corrupt '
                                                   f'(sha256 differs from its record)')
            return CacheDecision(engine, False, f'cached engine {engine.name} matches')
        stale = self._closest_stale(name, key, exclude=record)
        if stale is not None:
            diff = key.differences(stale)
            return CacheDecision(engine, True, f'stale engine for {name}: ' + ', '.join(diff))
        return CacheDecision(engine, True, f'no cached engine for {name} in {self.directory}')

    def _closest_stale(self, name: str, key: EngineKey,
                       exclude: Path) -> Optional[EngineKey]:
        """The cached key for ``name`` that differs from ``key`` in the fewest fields."""
        best = None
        if not self.directory.is_dir():
            return None
        for path in sorted(self.directory.glob(f'{name}-*.json')):
            if path == exclude:
                continue
            data = self._record(path)
            if data is None:
                continue
            other = data['_key']
            score = (len(key.differences(other)), -path.stat().st_mtime)
            if best is None or score < best[0]:
                best = (score, other)
        return None if best is None else best[1]

    def store(self, name: str, key: EngineKey, engine_bytes: bytes,
              extra: Optional[dict] = None) -> Path:
        """Write an engine and its record atomically; returns the engine path."""
        engine, record = self.paths(name, key)
        self.directory.mkdir(parents=True, exist_ok=True)
        tag = f'.tmp-{os.getpid()}'
        tmp_engine = engine.with_name(engine.name + tag)
        tmp_record = record.with_name(record.name + tag)
        try:
            tmp_engine.write_bytes(bytes(engine_bytes))
            digest = hashlib.sha256(bytes(engine_bytes)).hexdigest()
            tmp_record.write_text(json.dumps({
                'key': key.to_dict(), 'engine_sha256': digest, 'engine': engine.name,
                'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **(extra or {})},
                indent=2) + '\n')
            os.replace(tmp_engine, engine)
            os.replace(tmp_record, record)  # the record last: it vouches for the engine
        finally:
            tmp_engine.unlink(missing_ok=True)
            tmp_record.unlink(missing_ok=True)
        return engine

    def discard(self, name: str, key: EngineKey) -> None:
        """Remove the engine for ``key`` (e.g. one TensorRT refused to deserialize)."""
        for path in self.paths(name, key):
            path.unlink(missing_ok=True)
