"""Build saner_kernels and its native extension ``saner_kernels._C`` (csrc/).

pip install --no-build-isolation -e .     # build isolation would download another torch
"""

import os
import platform

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# The AVX2 kernel library lands here (not in a temporary build dir) so that tests can inspect it.
NATIVE_LIB_DIR = os.path.join(HERE, "build", "native")
# -ffp-contract=off: the compiler fuses no multiply-add of its own (the kernels call fmadd/fma exactly
# where the reference's torch ops do), so results match the reference's rounding.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]


def _build_identity():
    """saner_kernels/_source_hash.py (the op ABI version and the source hash), loaded by path: the package itself
    is not importable yet."""
    import runpy

    return runpy.run_path(os.path.join(HERE, "saner_kernels", "_source_hash.py"))


def _with_cuda(torch, cpp_extension):
    switch = os.environ.get("SANER_KERNELS_CUDA", "").strip().lower()
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    cuda_possible = torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
    if switch in ("0", "off", "false", "no"):
        return False
    if switch in ("1", "on", "true", "yes") and not cuda_possible:
        raise RuntimeError(
            "SANER_KERNELS_CUDA=1 but the CUDA op cannot be built: "
            f"torch {torch.__version__} has CUDA {torch.version.cuda}, nvcc at {nvcc!r} "
            f"(CUDA_HOME={cpp_extension.CUDA_HOME!r}). Install a CUDA build of torch and set CUDA_HOME."
        )
    return cuda_possible


def _write_build_info(torch, with_cuda):
    """Build facts for ops/native.py's staleness check (the op ABI version, the source hash, torch, CUDA), in a
    generated header that only csrc/module.cpp includes: a source change then recompiles the changed files and
    module.cpp only."""
    generated = os.path.join(HERE, "build", "generated")
    os.makedirs(generated, exist_ok=True)
    identity = _build_identity()
    info = (
        "#pragma once\n"
        f"#define SANER_KERNELS_ABI_VERSION {int(identity['ABI_VERSION'])}\n"
        f'#define SANER_KERNELS_SRC_HASH "{identity["source_hash"](os.path.join(HERE, "csrc"))}"\n'
        f'#define SANER_KERNELS_TORCH_VERSION "{torch.__version__}"\n'
        f"#define SANER_KERNELS_WITH_CUDA {int(with_cuda)}\n"
    )
    path = os.path.join(generated, "saner_kernels_build_info.h")
    if not os.path.exists(path) or open(path).read() != info:
        with open(path, "w") as f:
            f.write(info)
    return generated


def _avx2_library(cpp_extension):
    """The AVX2+FMA kernels as their own static library: one translation unit compiled with the real ISA
    flags, the way ATen builds its CPU_CAPABILITY variants (build_ext links it into the extension).
    Nothing on other architectures: the baseline kernels are then the only build."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    return [
        (
            "saner_kernels_avx2",
            {
                "sources": ["csrc/cpu/kernels_avx2.cpp"],
                "include_dirs": cpp_extension.include_paths(),
                "macros": [("CPU_CAPABILITY", "AVX2"), ("CPU_CAPABILITY_AVX2", None)],
                "cflags": ["-std=c++20", "-fPIC", "-Wno-unknown-pragmas", *CXX_FLAGS, "-mavx2", "-mfma", "-mf16c"],
                "obj_deps": {"": ["csrc/cpu/kernels.h", "csrc/cpu/kernel_table.h"]},
            },
        )
    ]


def native_build():
    """(ext_modules, libraries, cmdclass): the C++ CPU op (always), the CUDA op (when torch has CUDA and
    nvcc is there), and the AVX2 kernel library they link.

    Environment:
      SANER_KERNELS_CUDA=0/1   force the CUDA op off / on (default: on when torch has CUDA and nvcc exists)
      TORCH_CUDA_ARCH_LIST     GPU architectures, default "8.0;9.0" (A100, H100)
      CUDA_HOME                CUDA toolkit root (torch guesses it from nvcc on PATH otherwise)
      MAX_JOBS                 parallel compile jobs
    """
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # metadata-only runs (egg_info without torch): no extension
        return [], [], {}

    class BuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension, building the AVX2 library first also when run alone (build_ext --inplace)."""

        def run(self):
            self.run_command("build_clib")
            super().run()

    with_cuda = _with_cuda(torch, cpp_extension)
    libraries = _avx2_library(cpp_extension)
    # Relative paths: setuptools wants them.
    sources = [
        "csrc/ops.cpp",
        "csrc/module.cpp",
        "csrc/cpu/ops_cpu.cpp",
        "csrc/cpu/isa.cpp",
        "csrc/cpu/kernels_default.cpp",
    ]
    kwargs = dict(
        include_dirs=[_write_build_info(torch, with_cuda)],
        define_macros=[("SANER_KERNELS_AVX2", "1" if libraries else "0")],
        extra_link_args=["-fopenmp"],
    )
    cxx = ["-fopenmp", *CXX_FLAGS]  # OpenMP: at::parallel_for's inline OpenMP backend
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "-fmad=false", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension(
            "saner_kernels._C",
            [*sources, "csrc/cuda/saner_cuda.cu"],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension("saner_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], libraries, {"build_ext": BuildExt}


ext_modules, libraries, cmdclass = native_build()

setup(
    name="saner_kernels",
    version="0.1.0",
    description="Fused SANER and SAM optimizers for PyTorch (Triton, C++ CPU and CUDA kernels)",
    packages=find_packages(include=["saner_kernels", "saner_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.11"],  # tested in .ci/run: 2.11, 2.13, 2.14.1 (CUDA build), 2.15
    extras_require={
        "triton": ["triton>=3.0"],
        # The framework client tests (tests/test_client_*.py); both accept torch 2.11 to 2.15 as installed.
        "test": ["pytest", "pytest-benchmark", "lightning>=2.6.6,<2.7", "accelerate>=1.16,<1.17"],
        "demo": ["scikit-learn", "matplotlib", "pillow"],
    },
    ext_modules=ext_modules,
    libraries=libraries,
    options={"build_clib": {"build_clib": NATIVE_LIB_DIR}},
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["saner-train=saner_kernels.train.__main__:main"]},
)
