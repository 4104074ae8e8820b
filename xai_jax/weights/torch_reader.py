"""Reads PyTorch checkpoints without executing code from the file.

Checkpoints are untrusted input: unpickling can call any function the pickle names. Before anything is
loaded, the pickle opcodes of the file (the zip format's ``data.pkl``, the legacy format's leading pickles,
or a plain ``pickle.dump`` file) are scanned with :func:`pickletools.genops` -- which only parses, never
imports or calls -- for the globals they reference. A file that references anything outside what torch's
weights-only unpickler allows (``os.system``, a pickled ``nn.Module`` or custom class) is refused with one
line naming those globals. What remains is loaded with ``torch.load(..., weights_only=True)``, which
unpickles only tensors, containers and primitive types, so it stays the final safety gate. Damaged files
(empty, random bytes, truncated archives, a renamed ``.npz``) give one short "not a readable" line.
Safetensors files are read with the ``safetensors`` package, which never executes code.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import re
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np

from xai_jax.errors import XaiJaxError

# Keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

# torch.save's legacy (non-zip) format starts with a pickle of this number, then the protocol version,
# system info, the object and the storage keys -- five pickles -- followed by raw storage bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLES = 5
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_NAMED = 3  # globals named in a refusal

# Used only when torch's own allow-list cannot be read (a future torch moved it): torch.load still decides.
_FALLBACK_ALLOWED = frozenset({"collections.OrderedDict", "collections.Counter", "_codecs.encode",
                               "builtins.set", "builtins.bytearray", "builtins.complex"})

_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                         "BINSTRING", "SHORT_BINSTRING"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "STOP", "MEMOIZE", "POP", "POP_MARK", "MARK"}) | _PUT_OPS


def _require_torch():
    try:
        import torch
    except ImportError:
        raise XaiJaxError(
            "reading PyTorch checkpoints needs the torch extra: pip install 'xai-jax[torch]'"
        ) from None
    return torch


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    torch = _require_torch()
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj:
                return _find_state_dict(obj[key], path)
    raise XaiJaxError(f"{path}: no state dict of tensors found (top-level keys: "
                      f"{', '.join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__})")


# ----------------------------------------------------------------------------------------------------
# Static scan of pickle opcodes


def _global_name(module: str, name: str, protocol: int) -> str:
    """``module.name`` as the unpickler would import it (Python 2 names mapped, as pickle and torch do)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _pickle_globals(stream: io.BufferedIOBase) -> tuple[list[str], list[tuple[str, Any]]]:
    """Parses one pickle from ``stream`` (up to its STOP) without unpickling it.

    Returns:
      ``(globals, opcodes)``: the ``module.name`` of every GLOBAL / STACK_GLOBAL / INST reference (an
      unresolvable STACK_GLOBAL or EXT* extension code as a placeholder), and the first few ``(opcode name,
      argument)`` pairs (enough to recognise the legacy format's magic number).

    Raises:
      ValueError: not a complete pickle (garbage bytes, truncated).
    """
    found: list[str] = []
    head: list[tuple[str, Any]] = []
    protocol = 0
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # recent pushes: strings where known, None otherwise (enough for STACK_GLOBAL)
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if len(head) < 4:
            head.append((name, arg))
        if name == "PROTO":
            protocol = arg
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(_global_name(module, attr, protocol))
        elif name == "STACK_GLOBAL":
            module, attr = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            found.append(_global_name(module, attr, protocol) if isinstance(module, str) and isinstance(attr, str)
                         else "<a global named at unpickling time>")
        elif name.startswith("EXT"):
            found.append(f"<copyreg extension {arg}>")
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _PUT_OPS:
            memo[arg] = pushed[-1] if pushed else None
        if name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name in _GET_OPS:
            pushed.append(memo.get(arg))
        elif name == "STACK_GLOBAL":
            pushed[-2:] = [None]
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        del pushed[:-8]
    return found, head


def _allowed_globals() -> frozenset[str] | None:
    """The globals torch's weights-only unpickler accepts (its defaults and ``add_safe_globals``)."""
    try:
        from torch import _weights_only_unpickler as wou
        return frozenset(wou._get_allowed_globals()) | frozenset(wou._get_user_allowed_globals())
    except Exception:  # noqa: BLE001 - a private API; without it torch.load alone decides
        return None


def _is_allowed(name: str, allowed: frozenset[str] | None) -> bool:
    if allowed is not None:
        return name in allowed
    return name in _FALLBACK_ALLOWED or name.startswith("torch.")


def _display(name: str) -> str:
    """``posix.system`` -> ``os.system``: ``os`` re-exports its platform module, and users know it as ``os``."""
    module, _, attr = name.partition(".")
    return f"os.{attr}" if module in ("posix", "nt") and attr else name


def _refusal(path: str, names: Iterable[str]) -> XaiJaxError:
    unique = list(dict.fromkeys(_display(n) for n in names))
    listed = ", ".join(unique[:_MAX_NAMED]) + (f" and {len(unique) - _MAX_NAMED} more" if len(unique) > _MAX_NAMED
                                               else "")
    return XaiJaxError(f"refusing to load {path}: it would run code when unpickled (it references {listed})")


def _unreadable(path: str, reason: str) -> XaiJaxError:
    return XaiJaxError(f"{path}: not a readable PyTorch checkpoint ({reason})")


class _Scan:
    """What the static scan learnt: the format, the globals referenced, or why the file is unreadable."""

    def __init__(self, kind: str, globals_: list[str] | None = None, reason: str | None = None):
        self.kind = kind  # "zip", "legacy", "plain" or "unreadable"
        self.globals = globals_ or []
        self.reason = reason


def _scan(path: str) -> _Scan:
    with open(path, "rb") as f:
        start = f.read(4)
        f.seek(0)
        if start == _ZIP_MAGIC:
            return _scan_zip(f)
        try:
            found, head = _pickle_globals(f)
        except Exception:  # noqa: BLE001 - genops raises ValueError, struct.error, UnicodeDecodeError ...
            return _Scan("unreadable", reason="neither a zip archive nor a complete pickle")
        if _LEGACY_MAGIC not in [arg for op, arg in head if op != "PROTO" and isinstance(arg, int)]:
            return _Scan("plain", found)
        for _ in range(_LEGACY_PICKLES - 1):
            try:
                more, _ = _pickle_globals(f)
            except Exception:  # noqa: BLE001
                return _Scan("unreadable", found, reason="a truncated or damaged legacy torch.save file")
            found += more
        return _Scan("legacy", found)


def _scan_zip(f) -> _Scan:
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pickles:
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                return _Scan("unreadable", reason=f"a zip archive without data.pkl, holding {shown or 'nothing'}")
            data = archive.read(pickles[0])
    except Exception:  # noqa: BLE001 - BadZipFile, EOFError, CRC errors, zlib errors ...
        return _Scan("unreadable", reason="a truncated or damaged zip archive")
    try:
        found, _ = _pickle_globals(io.BytesIO(data))
    except Exception:  # noqa: BLE001
        return _Scan("unreadable", reason="its data.pkl is not a complete pickle")
    return _Scan("zip", found)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TORCH_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _torch_reason(text: str) -> str:
    """The informative part of a torch.load error: its first line that is not torch's advice, one sentence."""
    for line in _ANSI.sub("", text).splitlines():
        line = line.strip()
        if not line or "weights_only" in line.lower() or line.startswith(("Weights only load failed",
                                                                          "Check the documentation",
                                                                          "Please file an issue")):
            continue
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if line:
            sentence = line.split(". ")[0].rstrip(".")
            return sentence if len(sentence) <= 160 else sentence[:157] + "..."
    return "torch.load failed"


# ----------------------------------------------------------------------------------------------------


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a ``.pt``/``.pth``/``.th``/``.bin`` checkpoint as ``{name: float32 NumPy array}``.

    Args:
      path: a zip-format or legacy-format ``torch.save`` file holding a state dict, possibly nested under
        ``state_dict``/``model``/... as training scripts save it.

    Returns:
      The tensors by name, on the CPU, as NumPy arrays.

    Raises:
      XaiJaxError: the file is missing, is not a PyTorch checkpoint (a plain pickle, damaged), or would run
        code when unpickled (the message names the globals it references; nothing is executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise XaiJaxError(f"weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise _unreadable(path, "empty file")
    torch = _require_torch()
    scan = _scan(path)
    allowed = _allowed_globals()
    unsafe = [g for g in scan.globals if not _is_allowed(g, allowed)]
    if unsafe:
        raise _refusal(path, unsafe)
    if scan.kind == "plain":
        # torch.load reads a non-zip file only if it starts with torch's magic number; this one does not.
        raise XaiJaxError(f"{path}: not a PyTorch checkpoint: a plain Python pickle that holds no state dict "
                          f"of tensors (save one with torch.save(model.state_dict(), ...))")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ... depending on damage
        text = str(err)
        named = _TORCH_GLOBAL.findall(text)
        if named:  # a reference the scan could not resolve (a global built at unpickling time)
            raise _refusal(path, named) from None
        if "unrecognized function" in text or "Can only create new object" in text:
            raise XaiJaxError(f"refusing to load {path}: it would run code when unpickled "
                              f"({_torch_reason(text)})") from None
        raise _unreadable(path, scan.reason or _torch_reason(text)) from None
    tensors = _find_state_dict(obj, path)
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in tensors.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a ``.safetensors`` file as ``{name: NumPy array}`` (float tensors as float32)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise XaiJaxError(f"weights file not found: {path}")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise XaiJaxError("reading safetensors needs: pip install safetensors") from None
    try:
        tensors = load_file(path)
    except Exception as err:
        raise XaiJaxError(f"{path}: not a readable safetensors file ({err})") from None
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}
