"""Build-time check of the GPU serving image: can ONNX Runtime's CUDA provider load here?

onnxruntime-gpu opens ``capi/libonnxruntime_providers_cuda.so`` with dlopen when a session asks for
CUDAExecutionProvider. When one of the libraries that file needs is missing (cuBLAS, cuRAND, the CUDA runtime of the
right major version), the provider does not come up and ``ikd serve --providers CUDAExecutionProvider`` refuses to
start: a crash loop on the cluster. This script finds that out while the image is built, on a machine without a GPU.

What it checks, with the image's own environment (``LD_LIBRARY_PATH`` as the image sets it):

1. the provider library exists (the package is onnxruntime-gpu, not the CPU build, and nothing overwrote it);
2. the CUDA version the package was built for has the major version given by ``--cuda-major`` (the one the docs
   state with its minimum driver);
3. ``ldd`` finds every library the provider needs, except those the node's driver provides at run time
   (``libcuda.so.1``: the NVIDIA container toolkit mounts it; ``--from-driver``);
4. every library the provider opens itself at run time (cuDNN 9: ``--dlopen``) is in ``LD_LIBRARY_PATH`` or the
   linker cache, and ``ldd`` finds its own dependencies.

Exit code 0 when all of that holds; 1 with one line per problem on stderr otherwise. Standard library only: it runs
in the image before ikd is installed. ``python imagebuild/check_cuda_provider.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

PROVIDER = "libonnxruntime_providers_cuda.so"
#: Libraries of the NVIDIA driver: never in the image, mounted from the node when the container starts.
DRIVER_LIBRARIES = ("libcuda.so.1",)
#: Libraries the CUDA provider loads with dlopen (not in its ELF dependencies): cuDNN 9.
DLOPENED = ("libcudnn.so.9",)

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$")


class CheckFailed(Exception):
    """One or more problems; the message has one line per problem."""


def capi_folder() -> Path:
    """The ``capi`` folder of the installed onnxruntime package, found without importing it."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise CheckFailed("onnxruntime is not installed (the GPU image installs onnxruntime-gpu)")
    return Path(next(iter(spec.submodule_search_locations))) / "capi"


def built_cuda_version(capi: Path) -> str | None:
    """The CUDA version onnxruntime-gpu was built with (``cuda_version`` in capi/build_and_package_info.py)."""
    info = capi / "build_and_package_info.py"
    if not info.is_file():
        return None
    m = re.search(r"^cuda_version\s*=\s*['\"]([^'\"]*)['\"]", info.read_text(), flags=re.M)
    return m.group(1) if m and m.group(1) else None


def missing_from_ldd(output: str) -> list[str]:
    """The libraries that ``ldd`` output reports as ``not found``, in order, without repeats."""
    names: list[str] = []
    for line in output.splitlines():
        m = _NOT_FOUND.match(line)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def unresolved(library: Path, ldd: str, allowed: tuple[str, ...]) -> list[str]:
    """Dependencies of ``library`` (direct and indirect) that the dynamic linker cannot find, less ``allowed``."""
    try:
        out = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise CheckFailed(f"{ldd}: not found (ldd comes with the C library: libc-bin on Debian)") from None
    if out.returncode != 0 and not out.stdout.strip():
        raise CheckFailed(f"ldd {library}: {(out.stderr.strip() or 'failed')[:300]}")
    return [name for name in missing_from_ldd(out.stdout) if name not in allowed]


def search_path() -> list[Path]:
    """Folders the dynamic linker searches before its cache: ``LD_LIBRARY_PATH``."""
    return [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]


def in_linker_cache(name: str) -> Path | None:
    """Where ``ldconfig -p`` says ``name`` is, if anywhere."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        head, _, path = line.partition("=>")
        if head.split() and head.split()[0] == name and path.strip():
            return Path(path.strip())
    return None


def locate(name: str) -> Path | None:
    """The file the dynamic linker would open for ``dlopen(name)``: LD_LIBRARY_PATH first, then its cache."""
    for folder in search_path():
        if (folder / name).is_file():
            return folder / name
    return in_linker_cache(name)


def check(
    capi: Path,
    cuda_major: int | None = None,
    dlopened: tuple[str, ...] = DLOPENED,
    from_driver: tuple[str, ...] = DRIVER_LIBRARIES,
    ldd: str = "ldd",
) -> str:
    """Run the checks of this module on the onnxruntime ``capi`` folder; returns a one-line summary, raises
    :class:`CheckFailed` listing every problem found."""
    provider = capi / PROVIDER
    if not provider.is_file():
        raise CheckFailed(
            f"{provider}: not found; the installed onnxruntime is not onnxruntime-gpu (or the CPU package "
            "onnxruntime was installed after it and overwrote it)"
        )
    problems: list[str] = []
    version = built_cuda_version(capi)
    if cuda_major is not None:
        if version is None:
            problems.append(f"{capi / 'build_and_package_info.py'}: no cuda_version: cannot tell the CUDA major")
        elif version.split(".")[0] != str(cuda_major):
            problems.append(
                f"onnxruntime-gpu is built for CUDA {version}, not CUDA {cuda_major}.x: update the lock's CUDA "
                "libraries, the Dockerfile's --cuda-major and the minimum driver in docs/serving.md together"
            )
    problems += [
        f"{name}: not found (needed by {provider.name}; {where()})" for name in unresolved(provider, ldd, from_driver)
    ]
    for name in dlopened:
        path = locate(name)
        if path is None:
            problems.append(f"{name}: not found (the CUDA provider loads it at run time; {where()})")
            continue
        problems += [f"{dep}: not found (needed by {path})" for dep in unresolved(path, ldd, from_driver)]
    if problems:
        raise CheckFailed("\n".join(problems))
    return (
        f"CUDA provider OK: {provider} (built for CUDA {version or 'unknown'}) and {', '.join(dlopened) or 'nothing'} "
        f"resolve; from the node's driver at run time: {', '.join(from_driver)}"
    )


def where() -> str:
    folders = ":".join(str(p) for p in search_path())
    return f"searched LD_LIBRARY_PATH={folders or '(unset)'} and the linker cache"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="check_cuda_provider.py",
        description="Fail unless onnxruntime-gpu's CUDA provider finds every library it needs (run at image build).",
    )
    p.add_argument("--capi", type=Path, help="onnxruntime's capi folder (default: the installed package's)")
    p.add_argument("--cuda-major", type=int, help="the CUDA major version onnxruntime-gpu must be built for")
    p.add_argument(
        "--dlopen",
        action="append",
        metavar="LIB",
        help=f"a library the provider opens at run time; repeatable (default: {', '.join(DLOPENED)})",
    )
    p.add_argument(
        "--from-driver",
        action="append",
        metavar="LIB",
        help=f"a library the node's driver provides at run time; repeatable (default: {', '.join(DRIVER_LIBRARIES)})",
    )
    p.add_argument("--ldd", default="ldd", help="the ldd program (default: ldd)")
    args = p.parse_args(argv)
    try:
        summary = check(
            args.capi or capi_folder(),
            cuda_major=args.cuda_major,
            dlopened=tuple(args.dlopen) if args.dlopen is not None else DLOPENED,
            from_driver=tuple(args.from_driver) if args.from_driver is not None else DRIVER_LIBRARIES,
            ldd=args.ldd,
        )
    except CheckFailed as exc:
        for line in str(exc).splitlines():
            print(f"check_cuda_provider: error: {line}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
