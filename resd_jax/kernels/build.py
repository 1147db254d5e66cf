"""Our C++ kernels for XLA:CPU: compiled on first use, cached, loaded and registered as XLA FFI targets.

A kernel's source (`<name>.cc`, plus the shared headers here) is compiled with the system's C++ compiler
(`$CXX`, else g++ / c++ / clang++; `-O3 -march=<march>`) into a cache folder (`$RESD_JAX_CACHE`, default
`~/.cache/resd_jax`) under a name keyed by the sources, jaxlib's version, the compiler, the flags and the CPU's
feature flags, so a changed source, jaxlib or machine gets a fresh build and a cached one is reused. `march`
"native" is what the library uses; tests also build "x86-64-v3" (no AVX-512) to run the portable code paths.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jaxlib

_HERE = pathlib.Path(__file__).parent


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("RESD_JAX_CACHE") or pathlib.Path.home() / ".cache" / "resd_jax")


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line
  except OSError:
    pass
  return os.uname().machine


class CppKernel:
  """One source file's FFI handlers: `symbols` maps a short name ("fwd") to the exported handler symbol;
  `simd_symbol` names an exported `int f()` that says whether the build has the fast (AVX-512) code path."""

  def __init__(self, name: str, symbols: dict[str, str], what: str, simd_symbol: str):
    self.name, self.symbols, self.what, self.simd_symbol = name, dict(symbols), what, simd_symbol
    self.source = _HERE / f"{name}.cc"
    self._lock = threading.Lock()
    self._state: dict[str, object] = {}  # march -> library; "error" -> why the native build failed

  def build(self, march: str = "native", out_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Compile for `march` (cached) and return the shared library's path; RuntimeError with the compiler's
    message when it fails."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
      raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    flags = ["-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-Wno-attributes",
             f"-I{jax.ffi.include_dir()}", f"-I{_HERE}"]
    texts = [self.source.read_text()] + [h.read_text() for h in sorted(_HERE.glob("*.h"))]
    key = hashlib.sha256(b"\0".join(x.encode() for x in (
        *texts, jaxlib.__version__, compiler, " ".join(flags), _cpu_flags()))).hexdigest()[:16]
    folder = out_dir or cache_dir()
    lib = folder / f"{self.name}-{march}-{key}.so"
    if lib.exists():
      return lib
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
      tmp_lib = pathlib.Path(tmp) / lib.name
      proc = subprocess.run([compiler, *flags, str(self.source), "-o", str(tmp_lib)], capture_output=True,
                            text=True, timeout=300)
      if proc.returncode != 0:
        raise RuntimeError(f"compiling {self.source.name} failed: {proc.stderr.strip()[-2000:]}")
      os.replace(tmp_lib, lib)  # atomic: a concurrent build of the same key writes the same bytes
    return lib

  def target(self, short: str, march: str = "native") -> str:
    """The FFI target name of handler `short` in the `march` build."""
    return f"resd_{self.name}_{short}_{march}"

  def load(self, march: str = "native") -> None:
    """Build (if needed), load and register the handlers for `march`; idempotent."""
    with self._lock:
      if march not in self._state:
        lib = ctypes.cdll.LoadLibrary(str(self.build(march)))
        for short, symbol in self.symbols.items():
          jax.ffi.register_ffi_target(self.target(short, march), jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform="cpu")
        self._state[march] = lib

  def available(self) -> bool:
    """Whether the native build is loaded (building it on the first call). A failed build is remembered and
    reported once, as a warning naming what is used instead. RESD_JAX_CPU_KERNELS=0 says no without trying."""
    if os.environ.get("RESD_JAX_CPU_KERNELS", "1") == "0":
      return False
    if "error" in self._state:
      return False
    try:
      self.load()
      if not self.has_simd():
        raise RuntimeError("this CPU has no AVX-512 (BF16) for its fast path")
      return True
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
      self._state["error"] = str(e)  # a loaded build without the fast path stays loaded for explicit use
      warnings.warn(f"resd_jax: the {self.name} kernel is unavailable, using {self.what} ({e})")
      return False

  def has_simd(self, march: str = "native") -> bool:
    """Whether the `march` build compiled its vector code path (the portable one is for tests and checks)."""
    self.load(march)
    return bool(getattr(self._state[march], self.simd_symbol)())
