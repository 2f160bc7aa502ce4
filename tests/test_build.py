"""The extension: imports without a GPU, and the CUDA sources compile for sm_90a (where nvcc exists)."""
import ast
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc")


def _cuda_sources():
    """CUDA_SOURCES as setup.py lists them (read, not imported: importing setup.py would run setup())."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CUDA_SOURCES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no CUDA_SOURCES list")


def test_extension_imports_without_gpu():
    import grpo
    import grpo._C as C
    import grpo.kernels  # noqa: F401  (kernels/ is importable under grpo, never as top-level `kernels`)
    assert callable(C.fused_loss) and callable(C.advantages)
    assert grpo.kernels.__name__ == "grpo.kernels"
    if NVCC and os.environ.get("GRPO_BUILD_CUDA", "auto") != "0":
        assert C.has_cuda, "nvcc is on PATH but grpo._C was built without the CUDA kernels"
        assert "sm_90a" in C.cuda_archs and "sm_80" in C.cuda_archs


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: the CUDA sources cannot be compiled here")
def test_cuda_sources_compile_for_sm90a(tmp_path):
    sources = _cuda_sources()
    assert sources, "setup.py lists no CUDA sources"

    def compile_one(src):
        cmd = [NVCC, "-c", os.path.join(ROOT, src), "-o", str(tmp_path / (os.path.basename(src) + ".o")), "-O3",
               "-std=c++17", "-gencode", "arch=compute_90a,code=sm_90a", "-Xcompiler", "-fPIC",
               "-I", os.path.join(ROOT, "csrc"), "-Werror", "all-warnings", "-Xptxas", "-v"]
        return src, subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for src, res in pool.map(compile_one, sources):
            assert res.returncode == 0, f"nvcc failed on {src}:\n{res.stdout}\n{res.stderr}"
            assert os.path.getsize(tmp_path / (os.path.basename(src) + ".o")) > 0
            if src.endswith("loss.cu"):
                _check_rows_on_chip_resources(res.stdout + res.stderr)


def _check_rows_on_chip_resources(ptxas_log):
    """ptxas -v of loss.cu: every rows-on-chip kernel (a row slice held in registers) compiled, with no
    stack frame or spills; a spill would put the row in local memory, which is DRAM traffic again."""
    seen, current = 0, None
    for line in ptxas_log.splitlines():
        if "Compiling entry function" in line:
            current = "resident_loss_kernel" in line
            seen += bool(current)
        elif current and "bytes stack frame" in line:
            assert line.strip().startswith("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"), line
    # 3 dtypes x 3 slice sizes x entropy or not x temperature or not x prefetch or not
    assert seen == 72, f"expected 72 rows-on-chip kernels, saw {seen}"
