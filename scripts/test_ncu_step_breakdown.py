#!/usr/bin/env python3
"""Test scripts/ncu_step_breakdown.py on canned Nsight Compute raw pages
(scripts/testdata/ncu_step_*.csv: invented durations under real kernel names of cuDNN,
cuBLAS, PyTorch and attnrt).

  python3 scripts/test_ncu_step_breakdown.py

Exit status 0 when every check passes.
"""
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "testdata"
spec = importlib.util.spec_from_file_location("ncu_step_breakdown", HERE / "ncu_step_breakdown.py")
breakdown = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown)

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}")


def near(a, b):
    return abs(a - b) <= 1e-9 + 1e-6 * abs(b)


# Categories from kernel names.
for name, want in [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv forward"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv backward data"),
    ("void cudnn::wgrad2d_grouped_direct_kernel<float, 3>(int)", "conv backward filter"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "GEMM (cuBLAS: linear, 1x1 conv)"),
    ("conv2d_epilogue_bf16", "element-wise"),
    ("bias_grad_f32", "reduction"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCdHW<float>(int)", "batch norm"),
    ("batch_norm_backward_apply_bf16", "batch norm"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<int>(int)", "optimizer"),
    ("max_pool_forward_bf16", "pooling"),
    ("softmax_cross_entropy_f32", "loss"),
    ("some_new_kernel", "other"),
]:
    check(breakdown.category(name) == want, f"category({name!r}) = {breakdown.category(name)!r}, want {want!r}")
check(breakdown.short("void a::b<c<d>, 3>(int, float const*)") == "a::b", "short drops templates and parameters")

# Sums a step: attnrt's page holds two steps, PyTorch's one.
launches = breakdown.read_raw_csv(DATA / "ncu_step_attnrt.csv")
cats, kernels = breakdown.breakdown(launches, 2)
check(near(cats["batch norm"][0], 0.020) and near(cats["batch norm"][1], 1.0),
      f"attnrt batch norm: two launches of 20 us over two steps, got {cats['batch norm']}")
check(near(sum(ms for ms, _ in cats.values()), 0.185), "attnrt: 370 us over two steps")
check(near(kernels["batch_norm_stats_bf16"][0], 0.020), "kernel rows sum their launches")

# The command line: a table with both runs, a JSON file, clear errors.
with tempfile.TemporaryDirectory() as d:
    out = pathlib.Path(d) / "b.json"
    r = subprocess.run([sys.executable, str(HERE / "ncu_step_breakdown.py"),
                        "--run", "attnrt", "2", str(DATA / "ncu_step_attnrt.csv"),
                        "--run", "torch", "1", str(DATA / "ncu_step_torch.csv"),
                        "--json", str(out)], capture_output=True, text=True)
    check(r.returncode == 0, f"two runs: exit {r.returncode}: {r.stderr}")
    check("| **kernel time a step** | **0.185** | **0.135** |" in r.stdout, f"totals row:\n{r.stdout}")
    check("| conv backward data | 0.030 (0.5) | - |" in r.stdout, "half a launch a step shown as 0.5")
    check(set(json.loads(out.read_text())) == {"attnrt", "torch"}, "JSON has both runs")
    bad = pathlib.Path(d) / "bad.csv"
    bad.write_text("==PROF== no kernels were profiled\n")
    r = subprocess.run([sys.executable, str(HERE / "ncu_step_breakdown.py"),
                        "--run", "empty", "1", str(bad)], capture_output=True, text=True)
    check(r.returncode == 1 and "--run empty" in r.stderr and "header" in r.stderr,
          f"no header: exit {r.returncode}: {r.stderr}")
    r = subprocess.run([sys.executable, str(HERE / "ncu_step_breakdown.py"),
                        "--run", "x", "zero", str(bad)], capture_output=True, text=True)
    check(r.returncode == 2 and "STEPS" in r.stderr, f"bad STEPS: exit {r.returncode}: {r.stderr}")

print("ncu_step_breakdown: ok" if not FAILURES else f"ncu_step_breakdown: {len(FAILURES)} failed")
sys.exit(1 if FAILURES else 0)
