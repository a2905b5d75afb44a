"""Safe, atomic file I/O shared by checkpoints, benchmarks and run folders.

Everything that persists tensors goes through safetensors (never pickle). Every write goes to a
temporary file in the destination folder and is moved into place with :func:`os.replace`, so an
interrupted process leaves either the old file or the new one — never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from pentachora.errors import CheckpointError


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows; else set-and-restore)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (``0o666 & ~umask``, 0644 with the usual 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new folder under the current umask (``0o777 & ~umask``, 0755 with the usual 022)."""
    return 0o777 & ~current_umask()


def make_temp_dir(prefix: str, dir: str | os.PathLike) -> Path:
    """``tempfile.mkdtemp`` (created 0700), then given the umask's folder mode like ``mkdir`` would."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    with contextlib.suppress(OSError):
        os.chmod(path, dir_mode())
    return path


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The temporary file (``mkstemp`` makes it 0600) gets the mode a plain ``open()`` would give a
    new file under the current umask, so the final file respects the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no fchmod on this platform
        os.fchmod(fd, file_mode())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with contextlib.suppress(OSError):  # a writer may have re-created the file (safetensors does)
            os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (format from the suffix). A symbolic link at ``path`` is
    replaced by the new file, never written through, and a crash leaves the old picture whole."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return path


def atomic_save_image(image: Any, path: str | os.PathLike) -> Path:
    """Save a PIL image to ``path`` atomically (format from the suffix; see :func:`atomic_save_figure`)."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with _atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with _atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save a flat ``name -> tensor`` mapping as safetensors, atomically.

    Tensors are made contiguous and moved to CPU; shared storage is cloned (safetensors refuses
    aliased tensors).
    """
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with _atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning every failure into a :class:`CheckpointError` that names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tensor file not found: {path}")
    _check_device(device, path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def _check_device(device: str | torch.device, path: Path) -> None:
    """A device this machine does not have is its own error (it read as a corrupt file)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"cannot load {path} onto {device!r}: not a device name ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"cannot load {path} onto {device!r}: this machine has no CUDA GPU (use 'cpu')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckpointError(
            f"cannot load {path} onto {device!r}: there are {torch.cuda.device_count()} GPU(s)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError(f"cannot load {path} onto {device!r}: MPS is not available here (use 'cpu')")


def read_tensor_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Read the string metadata header of a safetensors file (empty dict when it has none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tensor file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_tensor_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes (safetensors spelling, e.g. ``"F32"``) of a safetensors file, read
    from its header without loading any tensor.

    Raises:
        CheckpointError: a missing or unreadable file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tensor file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            out = {}
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = fh.get_slice(key)
                out[key] = (tuple(int(n) for n in sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that turns nesting too deep for the parser (a ``RecursionError``, e.g. 100,000
    ``[``) into a ``json.JSONDecodeError`` — a ``ValueError`` every caller already handles."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("JSON nested too deeply", str(text[:40]), 0) from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning failures into :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
