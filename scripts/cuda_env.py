"""Where the CUDA toolkit and its headers are: the one place that finds them.

Used by ``setup.py`` (the extension build), ``scripts/setup_env.sh`` (through
``--shell``) and ``tools/cuda_harness/harness_build.py`` (the CPU harness, which needs the
host-capable ``cuda_fp16.h`` / ``cuda_bf16.h``).  No third-party imports: it
runs before anything is installed.

    python scripts/cuda_env.py            # what was found
    python scripts/cuda_env.py --shell    # `export CUDA_HOME=...` / `export CPATH=...` lines for a shell
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import sys
from typing import List, Optional, Tuple

# Header directories the CUDA wheels of torch install under site-packages.
_WHEEL_INCLUDES = ("nvidia/cu13/include", "nvidia/cuda_runtime/include")
# What the CPU harness needs of a header directory.
_HOST_HEADERS = ("cuda_fp16.h", "cuda_bf16.h", "crt/host_defines.h")


def _has_cudart(root: str) -> bool:
    return bool(
        glob.glob(os.path.join(root, "lib64", "libcudart.so*")) or glob.glob(os.path.join(root, "lib", "libcudart.so*"))
    )


def _nvcc_roots() -> List[str]:
    """Toolkit roots suggested by the nvcc on the PATH: its real location, and
    the target of a one-line wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`)."""
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return []
    real = os.path.realpath(nvcc)
    roots = [os.path.dirname(os.path.dirname(real))]
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            for tok in shlex.split(head.decode("utf-8", "replace"), comments=True):
                if tok.endswith("/nvcc") and os.path.isabs(tok):
                    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(tok))))
    except (OSError, ValueError):
        pass
    return roots


def cuda_home() -> Optional[str]:
    """The toolkit root: $CUDA_HOME / $CUDA_PATH, else where nvcc's libraries
    live (nvcc itself may be a copy or wrapper in /usr/local/bin), else
    /usr/local/cuda[-*]; None without a toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.isdir(os.environ[var]):
            return os.environ[var]
    for cand in _nvcc_roots() + ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*")):
        if _has_cudart(cand):
            return cand
    return None


def wheel_include_dirs(paths: Optional[List[str]] = None) -> List[str]:
    """CUDA library headers shipped by torch's nvidia wheels (cuBLAS, cuda_runtime ...)."""
    out = []
    for p in paths if paths is not None else sys.path:
        for sub in _WHEEL_INCLUDES:
            cand = os.path.join(p, sub)
            if os.path.isdir(cand) and cand not in out:
                out.append(cand)
    return out


def host_header_dir() -> Tuple[Optional[str], str]:
    """The include dir whose cuda_fp16.h / cuda_bf16.h the host compiler can use.

    Looks at $SWIN_HARNESS_CUDA_INCLUDE, the toolkit (cuda_home and nvcc's
    roots), /usr/local/cuda, /opt/cuda, /usr/include and the nvidia wheels
    (which ship cuda_fp16.h but not always crt/host_defines.h).  Returns
    (dir or None, what was searched).
    """
    cands: List[str] = []
    if os.environ.get("SWIN_HARNESS_CUDA_INCLUDE"):
        cands.append(os.environ["SWIN_HARNESS_CUDA_INCLUDE"])
    home = cuda_home()
    if home:
        cands.append(os.path.join(home, "include"))
    cands += [os.path.join(r, "include") for r in _nvcc_roots()]
    cands += ["/usr/local/cuda/include", "/opt/cuda/include", "/usr/include"]
    for p in sys.path:
        cands += [os.path.join(p, sub) for sub in _WHEEL_INCLUDES]
    seen: List[str] = []
    for c in cands:
        if c in seen:
            continue
        seen.append(c)
        if all(os.path.isfile(os.path.join(c, f)) for f in _HOST_HEADERS):
            return c, ", ".join(seen)
    return None, ", ".join(seen)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home = cuda_home()
    incs = wheel_include_dirs()
    if "--shell" in argv:
        if home:
            print(f"export CUDA_HOME={shlex.quote(home)}")
        if incs:
            cpath = os.pathsep.join(incs + ([os.environ["CPATH"]] if os.environ.get("CPATH") else []))
            print(f"export CPATH={shlex.quote(cpath)}")
        return 0
    print(f"CUDA_HOME: {home or 'not found'}")
    print(f"wheel include dirs: {incs or 'none'}")
    d, searched = host_header_dir()
    print(f"host-capable cuda_fp16.h: {d or 'not found (searched ' + searched + ')'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
