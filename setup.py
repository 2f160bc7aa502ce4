"""Builds grpo._C: the C++ CPU kernels (OpenMP), always, and the CUDA kernels for sm_80 and sm_90a when
nvcc is found (GRPO_BUILD_CUDA=0 skips them, =1 requires them). cudart is linked statically so the
module imports on a machine with no GPU driver. Sources are listed explicitly."""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pybind11
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = [
    "csrc/bindings.cpp",
    "csrc/cpu/advantages.cpp",
    "csrc/cpu/logprobs.cpp",
    "csrc/cpu/loss.cpp",
    "csrc/cpu/linear.cpp",
]
CUDA_SOURCES = [
    "csrc/cuda/advantages.cu",
    "csrc/cuda/logprobs.cu",
    "csrc/cuda/loss.cu",
]
HEADERS = [  # rebuild when any of these change (build_ext only tracks `sources` otherwise)
    "csrc/params.h",
    "csrc/grpo_math.h",
    "csrc/cpu/kernels.h",
    "csrc/cpu/row.h",
    "csrc/cuda/kernels.h",
    "csrc/cuda/common.cuh",
]
CUDA_ARCHS = ["80", "90a"]
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
if os.environ.get("GRPO_NATIVE", "1") == "1":
    CXX_FLAGS.append("-march=native")  # the extension is always built on the machine that runs it


def find_nvcc():
    """Returns the nvcc path to use, or None; honours GRPO_BUILD_CUDA (0: never, 1: required)."""
    mode = os.environ.get("GRPO_BUILD_CUDA", "auto")
    if mode == "0":
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        cand = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else None
    if nvcc is None and mode == "1":
        sys.exit("GRPO_BUILD_CUDA=1 but nvcc was not found on PATH or in $CUDA_HOME/bin")
    return nvcc


def cuda_lib_dir(nvcc):
    """The folder holding libcudart_static.a (nvcc may be a wrapper script outside the toolkit)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in filter(None, homes):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
                return os.path.join(home, sub)
    sys.exit(f"nvcc found at {nvcc} but no libcudart_static.a under {[h for h in homes if h]}; set CUDA_HOME")


class BuildExt(build_ext):
    """Compiles the .cu sources with nvcc (ptxas resource usage printed), then links them in."""

    def build_extension(self, ext):
        nvcc = find_nvcc()
        if nvcc is not None:
            objects = self._compile_cuda(nvcc)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            ext.depends = list(ext.depends or []) + CUDA_SOURCES
            ext.library_dirs = list(ext.library_dirs or []) + [cuda_lib_dir(nvcc)]
            ext.extra_link_args = list(ext.extra_link_args or []) + ["-lcudart_static", "-ldl", "-lpthread", "-lrt"]
            ext.define_macros = list(ext.define_macros or []) + [
                ("GRPO_WITH_CUDA", "1"),
                ("GRPO_CUDA_ARCHS", '"' + ",".join("sm_" + a for a in CUDA_ARCHS) + '"'),
            ]
            print(f"grpo: building CUDA kernels with {nvcc} for sm_{', sm_'.join(CUDA_ARCHS)}", flush=True)
        else:
            print("grpo: nvcc not found or GRPO_BUILD_CUDA=0: building the CPU kernels only", flush=True)
        super().build_extension(ext)

    def _compile_cuda(self, nvcc):
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        gencode = []
        for arch in CUDA_ARCHS:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]

        def compile_one(src):
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", os.path.join(ROOT, src), "-o", obj, "-O3", "-std=c++17", "-Xptxas", "-v",
                   "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-I", os.path.join(ROOT, "csrc"),
                   *gencode]
            res = subprocess.run(cmd, capture_output=True, text=True)
            return src, obj, cmd, res

        jobs = int(os.environ.get("GRPO_BUILD_JOBS", "2"))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(compile_one, CUDA_SOURCES))
        objects = []
        for src, obj, cmd, res in results:
            print(f"== nvcc {src}\n{res.stdout}{res.stderr}", flush=True)  # ptxas -v: registers, smem, spills
            if res.returncode != 0:
                sys.exit(f"nvcc failed on {src} (exit {res.returncode}): {' '.join(cmd)}")
            objects.append(obj)
        return objects


ext = Extension(
    "grpo._C",
    sources=CPU_SOURCES,
    include_dirs=[pybind11.get_include(), os.path.join(ROOT, "csrc")],
    extra_compile_args=CXX_FLAGS,
    extra_link_args=["-fopenmp"],
    depends=HEADERS,
    language="c++",
)

setup(
    name="grpo",
    version="0.1.0",
    description="Throughput-first GRPO engine: fused kernels, colocated vLLM sampler",
    python_requires=">=3.11",
    packages=["grpo", "grpo.ops", "grpo.sampler", "grpo.kernels"],
    package_dir={"grpo": "grpo", "grpo.ops": "grpo/ops", "grpo.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    install_requires=["torch", "numpy"],
    entry_points={"console_scripts": ["grpo = grpo.cli:main"]},
    zip_safe=False,
)
