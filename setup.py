"""Build saner_kernels and its native extension ``saner_kernels._C`` (csrc/).

    pip install --no-build-isolation -e .     # build isolation would download another torch
"""
import os

from setuptools import find_packages, setup


def _source_hash(csrc):
    """saner_kernels/_source_hash.py, loaded by path: the package itself is not importable yet."""
    import runpy

    here = os.path.dirname(os.path.abspath(__file__))
    return runpy.run_path(os.path.join(here, "saner_kernels", "_source_hash.py"))["source_hash"](csrc)


def native_extensions():
    """The C++ CPU op (always) and the CUDA op (when torch has CUDA and nvcc is there).

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
        return [], {}

    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(here, "csrc")
    # Relative paths: setuptools wants them; ops.cpp first, then the baseline kernels before the AVX2 build,
    # so that the linker keeps baseline copies of any inline helper both kernel builds emit.
    sources = ["csrc/ops.cpp", "csrc/module.cpp", "csrc/cpu/kernels_default.cpp", "csrc/cpu/kernels_avx2.cpp"]

    switch = os.environ.get("SANER_KERNELS_CUDA", "").strip().lower()
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    cuda_possible = torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
    if switch in ("0", "off", "false", "no"):
        with_cuda = False
    elif switch in ("1", "on", "true", "yes"):
        if not cuda_possible:
            raise RuntimeError(
                "SANER_KERNELS_CUDA=1 but the CUDA op cannot be built: "
                f"torch {torch.__version__} has CUDA {torch.version.cuda}, nvcc at {nvcc!r} "
                f"(CUDA_HOME={cpp_extension.CUDA_HOME!r}). Install a CUDA build of torch and set CUDA_HOME."
            )
        with_cuda = True
    else:
        with_cuda = cuda_possible

    # Build facts for saner_kernels/ops/native.py's staleness check, in a generated header that only
    # csrc/module.cpp includes: a source change then recompiles the changed files and module.cpp only.
    generated = os.path.join(here, "build", "generated")
    os.makedirs(generated, exist_ok=True)
    info = (
        "#pragma once\n"
        f'#define SANER_KERNELS_SRC_HASH "{_source_hash(csrc)}"\n'
        f'#define SANER_KERNELS_TORCH_VERSION "{torch.__version__}"\n'
        f"#define SANER_KERNELS_WITH_CUDA {int(with_cuda)}\n"
    )
    info_path = os.path.join(generated, "saner_kernels_build_info.h")
    if not os.path.exists(info_path) or open(info_path).read() != info:
        with open(info_path, "w") as f:
            f.write(info)
    # -ffp-contract=off: the compiler fuses no multiply-add of its own (the kernels call fmadd/fma
    # exactly where the reference's torch ops do), so results match the reference's rounding.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources.append("csrc/cuda/saner_cuda.cu")
        nvcc_flags = ["-O3", "-fmad=false", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension(
            "saner_kernels._C", sources, include_dirs=[generated],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "saner_kernels._C", sources, include_dirs=[generated], extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = native_extensions()

setup(
    name="saner_kernels",
    version="0.1.0",
    description="Fused SANER and SAM optimizers for PyTorch (Triton, C++ CPU and CUDA kernels)",
    packages=find_packages(include=["saner_kernels", "saner_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark"],
        "demo": ["scikit-learn", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["saner-train=saner_kernels.train.__main__:main"]},
)
