"""Builds dense3d and its one C++/CUDA extension, ``dense3d._C``, the pytorch3d way.

* C++ sources (``dense3d/ops/csrc/**/*.cpp``) are always compiled.
* CUDA sources (``**/*.cu``) are compiled only when CUDA is available at build time or
  ``FORCE_CUDA=1``; they are then built with ``-DWITH_CUDA``.
* ``DENSE3D_NO_EXTENSION=1`` skips the extension: ``dense3d.ops`` then uses its pure-torch
  reference implementations (and says so once).
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    with open(os.path.join(ROOT, "requirements", name)) as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


def get_extensions():
    if os.environ.get("DENSE3D_NO_EXTENSION", "0") == "1":
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join("dense3d", "ops", "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))

    extra_compile_args = {"cxx": ["-O3", "-std=c++17", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    if (torch.cuda.is_available() and CUDA_HOME is not None) or force_cuda:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = [
            "-O3",
            "-std=c++17",
            "--expt-relaxed-constexpr",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    else:
        extension = CppExtension

    return [
        extension(
            "dense3d._C",
            sources,
            include_dirs=[os.path.abspath(csrc)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def get_cmdclass():
    if os.environ.get("DENSE3D_NO_EXTENSION", "0") == "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="dense3d",
    version="0.1.0",
    description="Dense captioning from many sensors: 3D boxes from LiDAR + cameras, audible events from audio + video.",
    author="dense3d developers",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "tools", "configs")),
    package_data={"dense3d": ["ops/csrc/**/*"]},
    install_requires=read_requirements("runtime.txt"),
    extras_require={"test": read_requirements("test.txt")},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    entry_points={"console_scripts": ["dense3d=dense3d.cli:main"]},
)
