"""Builds the CUDA harness artefacts (test-only; setup.py never builds them).

The CUDA kernel sources are compiled by the host C++ compiler with
``-DSWIN_CUDA_HARNESS`` (see tools/cuda_harness/cuda_harness.h) into:

* ``selftest`` / ``selftest_asan``: the harness self-test program (no torch),
  normal and AddressSanitizer builds;
* ``libswin_ext_harness.so`` / ``libswin_ext_harness_asan.so``: the
  ``swin_ext_harness`` torch op library (every ``tools/cuda_harness/*.cpp`` except
  ``selftest.cpp``, compiled as one translation unit), loaded with
  ``torch.ops.load_library``.

One ninja file under ``build/harness`` (``SWIN_HARNESS_BUILD_DIR`` overrides)
builds all of them in one run, so that ninja spreads the compilations over
the cores; ninja's dependency tracking makes re-runs incremental.  The ASan
library only loads into a Python started with ``LD_PRELOAD`` of the
compiler's libasan (torch is not ASan-built): see :func:`asan_env`.

Command line: ``python tools/cuda_harness/harness_build.py`` builds everything and prints
the paths.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.environ.get("SWIN_HARNESS_BUILD_DIR", os.path.join(ROOT, "build", "harness"))

VARIANTS = ("normal", "asan")
_FLAGS = {
    "normal": ["-O2"],
    # Serial blocks: static __shared__ arrays become plain statics that ASan
    # instruments (see cuda_harness.h).
    "asan": ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address", "-DSWIN_HARNESS_SERIAL_BLOCKS"],
}
# Hidden visibility + -Bsymbolic: the harness library defines the same
# swin_ext::cuda::launch_* template symbols as the nvcc-built swin_ext._C,
# which may be loaded in the same process; its calls must bind to its own.
_COMMON = [
    "-std=c++20", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas",
    "-DSWIN_CUDA_HARNESS", "-fdiagnostics-color=never",
]


class BuildUnavailable(RuntimeError):
    """The harness cannot be built here (no CUDA headers, compiler or ninja)."""


class BuildFailed(RuntimeError):
    """The compiler failed; the message holds its output."""


sys.path.insert(0, os.path.join(ROOT, "scripts"))
import cuda_env  # noqa: E402  (scripts/cuda_env.py: the one place that finds the CUDA headers)


def cuda_include_dir() -> Tuple[Optional[str], str]:
    """The CUDA include dir with cuda_fp16.h / cuda_bf16.h usable by the host
    compiler, and what was searched (scripts/cuda_env.py)."""
    return cuda_env.host_header_dir()


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise BuildUnavailable("no C++ compiler (set CXX)")
    return cxx


def _ninja() -> str:
    cand = shutil.which("ninja") or os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.path.isfile(cand):
        raise BuildUnavailable("ninja not found (pip install ninja)")
    return cand


def _print_file_name(name: str) -> Optional[str]:
    try:
        out = subprocess.run([compiler(), f"-print-file-name={name}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError, BuildUnavailable):
        return None
    path = out.stdout.strip()
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def asan_runtime() -> Optional[str]:
    """Path of the compiler's shared ASan runtime, or None."""
    return _print_file_name("libasan.so")


def asan_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of a Python process that can load the ASan library.

    torch is not ASan-built, so the ASan runtime is preloaded into the
    interpreter.  libstdc++ is preloaded right after it: python itself does not
    link libstdc++, and without it ASan's __cxa_throw interceptor finds no real
    __cxa_throw at start-up and aborts at the first C++ exception
    ("CHECK failed: ... real___cxa_throw").
    """
    env = dict(os.environ if base is None else base)
    rt = asan_runtime()
    if rt is None:
        raise BuildUnavailable("the compiler has no shared AddressSanitizer runtime (libasan.so)")
    pre = [rt]
    stdcxx = _print_file_name("libstdc++.so")
    if stdcxx and _is_elf(stdcxx):  # not a linker script
        pre.append(stdcxx)
    if env.get("LD_PRELOAD"):
        pre.append(env["LD_PRELOAD"])
    env["LD_PRELOAD"] = " ".join(pre)
    # Python and torch leak by design; torch's allocators are not instrumented.
    env["ASAN_OPTIONS"] = "detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:halt_on_error=1"
    env["SWIN_HARNESS_VARIANT"] = "asan"
    return env


def outputs(build_dir: str = BUILD_DIR) -> Dict[str, str]:
    return {
        "selftest": os.path.join(build_dir, "selftest"),
        "selftest_asan": os.path.join(build_dir, "selftest_asan"),
        "lib": os.path.join(build_dir, "libswin_ext_harness.so"),
        "lib_asan": os.path.join(build_dir, "libswin_ext_harness_asan.so"),
    }


def _torch_flags() -> Tuple[List[str], List[str]]:
    import torch
    from torch.utils import cpp_extension

    cflags = [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    cflags += ["-isystem" + p for p in cpp_extension.include_paths()]
    ldflags = []
    for p in cpp_extension.library_paths():
        ldflags += [f"-L{p}", f"-Wl,-rpath,{p}"]
    ldflags += ["-lc10", "-ltorch_cpu"]
    return cflags, ldflags


def _q(args: List[str]) -> str:
    return " ".join(shlex.quote(a).replace("$", "$$") if a != "$in" and a != "$out" else a for a in args)


def _esc(path: str) -> str:  # ninja path escaping
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def kernel_sources() -> List[str]:
    """The ATen-free CUDA translation units the harness library also compiles
    (csrc/cuda/attention/attention_<dtype>.cu, csrc/cuda/*_kernels.cu).  The
    glue files (csrc/cuda/<op>_cuda.cu) are included by harness_ops.cpp."""
    d = os.path.join(ROOT, "csrc", "cuda")
    units = glob.glob(os.path.join(d, "attention", "attention_*.cu")) + glob.glob(os.path.join(d, "*_kernels.cu"))
    return sorted(units)


def write_ninja(build_dir: str = BUILD_DIR) -> str:
    inc, searched = cuda_include_dir()
    if inc is None:
        raise BuildUnavailable(f"no CUDA headers (cuda_fp16.h + crt/host_defines.h) found; searched {searched}")
    cxx = compiler()
    tcflags, tldflags = _torch_flags()
    base = _COMMON + [f"-I{HARNESS_DIR}", f"-I{os.path.join(ROOT, 'csrc')}", "-isystem" + inc]
    ext_sources = sorted(
        p for p in glob.glob(os.path.join(HARNESS_DIR, "*.cpp"))
        if os.path.basename(p) not in ("selftest.cpp", "cuda_harness.cpp")
    )
    os.makedirs(build_dir, exist_ok=True)
    unity = os.path.join(build_dir, "swin_ext_harness_unity.cpp")
    unity_text = "// Generated by tools/cuda_harness/harness_build.py: the swin_ext_harness glue files.\n" + "".join(
        f'#include "{src}"\n' for src in ext_sources
    )
    if not os.path.exists(unity) or open(unity).read() != unity_text:
        with open(unity, "w") as f:
            f.write(unity_text)
    lines = [
        "# Generated by tools/cuda_harness/harness_build.py",
        "ninja_required_version = 1.3",
        f"cxx = {shlex.quote(cxx)}",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $out",
        "rule link",
        "  command = $cxx $in -o $out $ldflags",
        "  description = LINK $out",
    ]
    outs = outputs(build_dir)
    for v in VARIANTS:
        vflags = base + _FLAGS[v]
        suffix = "" if v == "normal" else "_asan"
        rt_obj = f"obj{suffix}/cuda_harness.o"
        rt_src = _esc(os.path.join(HARNESS_DIR, "cuda_harness.cpp"))
        lines += [f"build {rt_obj}: cxx {rt_src}", f"  flags = {_q(vflags)}"]
        st_obj = f"obj{suffix}/selftest.o"
        lines += [f"build {st_obj}: cxx {_esc(os.path.join(HARNESS_DIR, 'selftest.cpp'))}", f"  flags = {_q(vflags)}"]
        san = ["-fsanitize=address"] if v == "asan" else []
        lines += [
            f"build {_esc(os.path.relpath(outs['selftest' + suffix], build_dir))}: link {rt_obj} {st_obj}",
            f"  ldflags = {_q(san + ['-pthread'])}",
        ]
        # The glue files share one translation unit ("unity" build): each
        # would otherwise parse the ATen headers again (~8 s of CPU apiece).
        ext_obj = f"obj{suffix}/swin_ext_harness.o"
        ext_objs = [ext_obj]
        lines += [f"build {ext_obj}: cxx {_esc(unity)}", f"  flags = {_q(vflags + tcflags)}"]
        # The ATen-free kernel instantiation files of csrc/cuda (one per
        # dtype), compiled as C++: they build in parallel with the glue.
        for src in kernel_sources():
            obj = f"obj{suffix}/{os.path.splitext(os.path.basename(src))[0]}.o"
            ext_objs.append(obj)
            lines += [f"build {obj}: cxx {_esc(src)}", f"  flags = {_q(['-x', 'c++'] + vflags)}"]
        lines += [
            f"build {_esc(os.path.relpath(outs['lib' + suffix], build_dir))}: link {rt_obj} {' '.join(ext_objs)}",
            f"  ldflags = {_q(['-shared', '-Wl,-Bsymbolic'] + san + ['-pthread'] + tldflags)}",
        ]
    os.makedirs(build_dir, exist_ok=True)
    path = os.path.join(build_dir, "build.ninja")
    text = "\n".join(lines) + "\n"
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)
    return path


_runs: Dict[Tuple[str, Tuple[str, ...]], str] = {}


def build(
    targets: Optional[List[str]] = None, build_dir: str = BUILD_DIR, jobs: Optional[int] = None
) -> Dict[str, str]:
    """Builds ``targets`` (keys of :func:`outputs`; default all) in one ninja run.

    ninja keeps going past a failed target (``-k 0``), so that one broken
    source does not stop the others; :func:`require` then says, per target,
    whether it was built.  Raises BuildUnavailable when the toolchain is
    missing.  Memoized per process.  Returns :func:`outputs`.
    """
    outs = outputs(build_dir)
    targets = list(targets or outs.keys())
    key = (build_dir, tuple(sorted(targets)))
    if key not in _runs:
        write_ninja(build_dir)
        cmd = [_ninja(), "-C", build_dir, "-k", "0"]
        j = jobs or int(os.environ.get("MAX_JOBS", "0") or 0)
        if j:
            cmd += ["-j", str(j)]
        cmd += [os.path.relpath(outs[t], build_dir) for t in targets]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        _runs[key] = "" if proc.returncode == 0 else f"$ {' '.join(cmd)}\n{proc.stdout[-30000:]}\n{proc.stderr[-5000:]}"
    return outs


def require(target: str, build_dir: str = BUILD_DIR) -> str:
    """Path of a built target; raises BuildFailed with the compiler output if it failed."""
    outs = build(build_dir=build_dir)
    log = _runs[(build_dir, tuple(sorted(outs.keys())))]
    path = outs[target]
    if log:
        rel = os.path.relpath(path, build_dir)
        dry = subprocess.run([_ninja(), "-C", build_dir, "-n", rel], capture_output=True, text=True)
        if "no work to do" not in dry.stdout:
            raise BuildFailed(f"harness build of {rel} failed:\n{log}")
    return path


if __name__ == "__main__":
    import time

    t0 = time.time()
    names = sys.argv[1:] or list(outputs().keys())
    build(names)
    for k in names:
        print(f"{k}: {require(k) if len(names) == len(outputs()) else outputs()[k]}")
    print(f"built in {time.time() - t0:.1f}s")
