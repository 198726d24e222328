#!/usr/bin/env python3
"""Test scripts/ncu_roofline.py on canned Nsight Compute output in the format
scripts/ncu-transformer.sh collects (`ncu --csv --page raw`: a header row, a units row, one row
per launch; scripts/testdata/ncu_raw_*.csv) and on a made-up `benches/engine.rs --json`.

  python3 scripts/test_ncu_roofline.py

The numbers are invented; the expected figures below are worked by hand from them on the H200's
peaks (bf16 989.4 TFLOP/s, FMA 66.9, DRAM 4.8 TB/s). Exit status 0 when every check passes.
"""
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "testdata"
spec = importlib.util.spec_from_file_location("ncu_roofline", HERE / "ncu_roofline.py")
roofline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(roofline)

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}")


def near(a, b, rel=1e-3):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


# What `ncu --query-metrics` prints (abridged): this card lacks the tensor-pipe cycle counter
# and the theoretical occupancy.
QUERY = """Device NVIDIA H200 (GH100)
--------------------------------------------------- ----------------------------------------
Metric Name                                         Metric Description
dram__bytes_read                                    # of bytes read from DRAM
dram__bytes_write                                   # of bytes written to DRAM
dram__throughput                                    DRAM throughput
gpu__compute_memory_throughput                      compute memory pipeline throughput
gpu__time_duration                                  total duration in nanoseconds
l1tex__throughput                                   L1/TEX cache throughput
lts__throughput                                     L2 cache throughput
sm__inst_executed_pipe_tensor                       # of warp instructions executed by tensor pipe
sm__inst_executed_pipe_tensor_op_hmma               # of warp instructions executed by tensor pipe (HMMA ops)
sm__pipe_fma_cycles_active                          # of cycles where FMA pipe was active
sm__throughput                                      SM throughput
sm__warps_active                                    cumulative # of warps in flight
smsp__sass_thread_inst_executed_op_fadd_pred_on     # of FADD thread instructions executed where all predicates were true
smsp__sass_thread_inst_executed_op_ffma_pred_on     # of FFMA thread instructions executed where all predicates were true
smsp__sass_thread_inst_executed_op_fmul_pred_on     # of FMUL thread instructions executed where all predicates were true
"""


def test_metrics():
    keep, dropped = roofline.select_metrics(QUERY)
    check(set(dropped) == {
        "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
        "sm__maximum_warps_per_active_cycle_pct"}, f"metrics left out: {dropped}")
    check("launch__grid_size" in keep, "launch__ attributes are always kept")
    check("gpu__time_duration.sum" in keep and "dram__bytes_read.sum" in keep, "core metrics kept")
    check(roofline.select_metrics(None)[0] == roofline.METRICS, "no query: every metric")
    check(roofline.select_metrics("garbage\n")[0] == roofline.METRICS,
          "an unreadable query leaves ncu to judge")
    check(all(m in roofline.METRICS for m in roofline.CORE_METRICS), "core is a subset")
    with tempfile.TemporaryDirectory() as d:
        q = pathlib.Path(d) / "query.txt"
        q.write_text(QUERY)
        out = subprocess.run([sys.executable, str(HERE / "ncu_roofline.py"), "metrics", "--query",
                              str(q)], capture_output=True, text=True, check=True)
        check(out.stdout.strip() == ",".join(keep), "metrics subcommand prints the kept list")
        check("sm__maximum_warps_per_active_cycle_pct" in out.stderr, "left-out names on stderr")


def test_parse():
    launches = roofline.read_raw_csv(DATA / "ncu_raw_bf16.csv")
    check(len(launches) == 6, f"6 launches, got {len(launches)}")
    ln = launches[1]
    check(ln["name"] == "add_layer_norm_f32" and ln["grid"] == "(704, 1, 1)", "name and grid")
    check(ln["m"]["gpu__time_duration.sum"] == 5000.0, "duration in ns")
    check(ln["m"]["smsp__sass_thread_inst_executed_op_ffma_pred_on.sum"] == 1_000_000,
          "thousands separators")
    scaled = roofline.read_raw_csv(DATA / "ncu_raw_f32_units.csv")
    check(scaled[0]["m"]["gpu__time_duration.sum"] == 5000.0, "usecond scaled to ns")
    check(scaled[0]["m"]["dram__bytes_read.sum"] == 10_000_000, "Mbyte scaled to bytes")
    try:
        roofline.read_raw_csv(HERE / "test_ncu_roofline.py")
        check(False, "a file without the header is refused")
    except ValueError as e:
        check("no header row" in str(e), "the refusal says what is missing")


def rows_by_kernel(rows):
    return {r["kernel"]: r for r in rows}


def test_roofline():
    tensor, fma, dram = {"bf16": 989.4e12, "tf32": 494.7e12, "f32": 494.7e12}, 66.9e12, 4.8e12
    rows = roofline.aggregate(roofline.read_raw_csv(DATA / "ncu_raw_bf16.csv"), 1, "bf16",
                              tensor["bf16"], fma, dram)
    check([r["kernel"] for r in rows] == ["window_attention_fused_bf16", "linear_tc_bf16",
                                          "add_layer_norm_f32", "ffn_split_k_reduce_f32",
                                          "small_stall_kernel"], "sorted by time")
    by = rows_by_kernel(rows)
    lin = by["linear_tc_bf16"]
    # 2e6 HMMA x 4096 = 8.192 GFLOP in 20 us; floor 8.192e9 / 989.4e12 = 8.280 us.
    check(near(lin["tflops"], 409.6), f"linear TFLOP/s {lin['tflops']}")
    check(near(lin["floor_us"], 8.192e9 / 989.4e12 * 1e6), f"linear floor {lin['floor_us']}")
    check(lin["bound"] == "compute" and round(lin["roofline_pct"]) == 41, "linear 41% compute")
    check(lin["limiter"] == "compute: tensor pipe 75%", lin["limiter"])
    norm = by["add_layer_norm_f32"]
    # 16 MB in 5 us; floor 16e6 / 4.8e12 = 3.333 us.
    check(near(norm["dram_gbs"], 3200.0), f"layer norm GB/s {norm['dram_gbs']}")
    check(norm["bound"] == "memory" and round(norm["roofline_pct"]) == 67, "norm 67% memory")
    check(norm["limiter"] == "memory: DRAM 68%", norm["limiter"])
    att = by["window_attention_fused_bf16"]
    # Two launches of 30 and 10 us: 1e6 HMMA x 4096 and 8e6 FFMA x 2 over 40 us.
    check(att["calls"] == 2 and near(att["time_us"], 40.0), "two launches merged")
    floor = (4.096e9 / 989.4e12 + 16e6 / 66.9e12) * 1e6
    check(near(att["floor_us"], floor), f"attention floor {att['floor_us']} vs {floor}")
    check(att["limiter"] == "latency: grid 66 blocks, 0.50 waves", att["limiter"])
    check(by["ffn_split_k_reduce_f32"]["limiter"] == "latency: occupancy 12%", "occupancy")
    check(by["small_stall_kernel"]["limiter"] == "latency: stalls (SM 30%, memory 25%)", "stalls")
    two = roofline.aggregate(roofline.read_raw_csv(DATA / "ncu_raw_f32_units.csv"), 2, "f32",
                             tensor["f32"], fma, dram)
    check(len(two) == 1 and two[0]["calls"] == 1 and near(two[0]["time_us"], 5.0),
          "two passes: per-pass calls and time")
    check(round(two[0]["roofline_pct"]) == 67, "per-pass roofline unchanged")


def engine_json():
    rows = []
    for part, base in (("encoder", 1.0), ("transformer", 1.5)):
        for precision, peak in (("f32", 66.9), ("bf16", 989.4)):
            for batch in (1, 8):
                for mode, extra in (("fused", 0.0), ("streams", 0.1)):
                    ms = base * batch ** 0.5 + extra
                    gflops = 14.1 * batch / (ms * 1e-3) if part == "encoder" else 15.0 * batch / (ms * 1e-3)
                    rows.append({"part": part, "mode": mode, "precision": precision,
                                 "launch": "graph", "batch": batch, "p50_ms": ms,
                                 "p10_ms": ms, "p90_ms": ms, "gflops": gflops,
                                 "frames_per_s": batch * 1e3 / ms, "peak_tflops": peak,
                                 "peak_fraction": gflops / (peak * 1e3)})
    return {"device": "NVIDIA H200 (sm_90)", "batches": [1, 8], "reps": 50, "warmup": 5,
            "rows": rows}


TRACE = {"traceEvents": [
    {"name": "encoder 0/qkv", "ph": "X", "ts": 0.0, "dur": 10.0, "pid": 0, "tid": 0},
    {"name": "encoder 0/attention", "ph": "X", "ts": 10.0, "dur": 30.0, "pid": 0, "tid": 0},
    {"name": "encoder 1/qkv", "ph": "X", "ts": 40.0, "dur": 12.0, "pid": 0, "tid": 0},
    {"name": "encoder 1/attention", "ph": "X", "ts": 52.0, "dur": 28.0, "pid": 0, "tid": 0},
    {"name": "decoder/post norm", "ph": "X", "ts": 80.0, "dur": 20.0, "pid": 0, "tid": 0}]}


def test_stages():
    lines = roofline.stage_table("bf16", TRACE)
    check("100.0 us on the main stream" in lines[0], lines[0])
    check("| encoder */attention | 2 | 58.0 | 58% |" in lines, "layers summed")
    check("| encoder */qkv | 2 | 22.0 | 22% |" in lines, "qkv summed")
    check("| decoder/post norm | 1 | 20.0 | 20% |" in lines, "unnumbered stage kept")
    check(lines.index("| encoder */attention | 2 | 58.0 | 58% |")
          < lines.index("| encoder */qkv | 2 | 22.0 | 22% |"), "sorted by time")


def test_cli():
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "engine.json").write_text(json.dumps(engine_json()))
        (d / "trace.json").write_text(json.dumps(TRACE))
        cmd = [sys.executable, str(HERE / "ncu_roofline.py"), "table", "--device", "NVIDIA H200",
               "--run", "encoder", "bf16", str(DATA / "ncu_raw_bf16.csv"),
               "--run", "transformer", "f32", str(d / "missing.csv"),
               "--run", "transformer", "bf16", str(HERE / "test_ncu_roofline.py"),
               "--trace", "bf16", str(d / "trace.json"), "--trace", "f32", str(d / "none.json"),
               "--engine", str(d / "engine.json"), "--out", str(d / "t.md"),
               "--json", str(d / "t.json")]
        out = subprocess.run(cmd, capture_output=True, text=True)
        check(out.returncode == 0, f"table exits 0: {out.stderr}")
        md = (d / "t.md").read_text()
        check("DRAM 4.8 TB/s" in md, "the H200's bandwidth is used")
        check("**encoder, bf16**: 6 launches a pass, 72.0 us" in md, "run summary")
        check("against the model's 14.10 GFLOP" in md, "the model's FLOPs from the engine file")
        check("| `linear_tc_bf16` (24,11,1) | 1 | 20.0 (28%) | 409.6 | 200 | 41 (compute) | 80 | "
              "45 | 40 (50) | compute: tensor pipe 75% |" in md, "linear row")
        check("**transformer, f32**: no ncu output" in md, "a missing run is named")
        check("**stages, bf16** (CUDA events" in md and "**stages, f32**: no trace" in md,
              "stage tables")
        check("**transformer, bf16**: no ncu table:" in md, "a run without a table is named")
        check("| encoder | bf16 | 8 | 2.828 (fused, graph) | 2828 | 39.9 | 4.0 (989.4) |" in md,
              "batch table row")
        j = json.loads((d / "t.json").read_text())
        check(j["runs"][0]["kernels"][0]["kernel"] == "window_attention_fused_bf16", "json rows")
        bad = subprocess.run(cmd[:3] + ["--device", "Mystery GPU"] + cmd[5:9],
                             capture_output=True, text=True)
        check(bad.returncode == 1 and "no peaks known" in bad.stderr, "unknown card refused")
        lone = subprocess.run(cmd[:9] + ["--engine", str(d / "none.json")], capture_output=True,
                              text=True)
        check(lone.returncode == 0 and "none.json missing" in lone.stdout,
              "a missing engine file is a note")
        b = subprocess.run([sys.executable, str(HERE / "ncu_roofline.py"), "batches", "--engine",
                            str(d / "engine.json")], capture_output=True, text=True)
        check(b.returncode == 0 and "| transformer | f32 | 1 | 1.500 (fused, graph)" in b.stdout,
              "batches subcommand")


if __name__ == "__main__":
    test_metrics()
    test_parse()
    test_roofline()
    test_stages()
    test_cli()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("all ncu_roofline checks passed")
