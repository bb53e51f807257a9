"""benchmarks/kernels.py runs end to end on the CPU (tiny sizes), so a GPU session does not find a broken
script: every section of its report is written, the CPU rows hold numbers and the Triton rows say pending.

kernels.py and demo_precision.py run as scripts, as the GPU session and users run them; the other scripts'
``main(argv)`` runs in this process (a subprocess costs an interpreter and a torch import)."""

from __future__ import annotations

import importlib
import json
import logging
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _run_main(module: str, argv: list[str]) -> object:
    """``benchmarks.<module>.main(argv)`` in this process, the root logger as it was afterwards (a script's
    ``logging.basicConfig`` must not reach the tests after it)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return importlib.import_module(f"benchmarks.{module}").main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _kernels_run(tmp_path: Path, name: str, *argv: str) -> tuple[str, str]:
    """benchmarks/kernels.py run as the GPU session runs it (a script), at tiny sizes on the CPU: its report and
    its log (stdout and stderr)."""
    out = tmp_path / name
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels.py"), "--device", "cpu", "--pixels", "256",
                           "--engine-side", "16", "--reps", "1", "--no-compile", "--peak-side", "256", "--copy-mib",
                           "32", *argv,
                           "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(), proc.stdout + proc.stderr


def _kernels(tmp_path: Path, name: str, *argv: str) -> str:
    return _kernels_run(tmp_path, name, *argv)[0]


def test_kernels_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """Every mode's optional sections (--quick leaves out the per-layer rows, which --required-only runs below)."""
    text = _kernels(tmp_path, "kernels-cpu.md", "--quick", "--no-zarr")
    for section in ("## Device peaks", "## The issue's goals", "## Whole spectral stage", "## Per layer",
                    "## Spatial stage", "## Engine end to end"):
        assert section in text, f"{section} missing from the report"
    row = re.search(r"\| eager \(conv2d channels-last\) \| float32 \| ([0-9.]+) ", text)
    assert row and float(row.group(1)) > 0, "no timed eager float32 stage row"
    assert "## Per layer\n\nNot run in this run: --quick skips the per-layer rows." in text
    assert re.search(r"\| float32 exact \(TF32 off\) \| 256 \| [0-9.]+ ", text), "no timed spatial row"
    assert re.search(r"\| dense \(Toeplitz GEMMs\), bfloat16 \(spatial_precision=bfloat16\) \| 256 \| "
                     r"[0-9.]+ ", text), "no timed low-precision dense spatial row"
    fused = "| triton (fused): backend='triton' as the engine calls it"
    assert f"{fused} | bfloat16 | pending: needs a CUDA device |" in text
    assert "## Where the engine's time goes" in text, "no engine profile section"
    ops = re.findall(r"^\| `([^`]+)` \| (\d+) \| ([0-9.]+) \| ([0-9.]+)% \|$", text, re.M)
    assert ops and all(int(c) > 0 and float(ms) > 0 for _, c, ms, _ in ops), "profile rows without time"
    # the CPU rows' bf16 figures depend on the ISA, which the header names; the FLOP count says what it counts
    assert re.search(r"^- device: .+, ISA \w+, oneDNN bf16 (no|yes|emulated)", text, re.M), "no ISA line"
    assert "padding work not counted" not in text and "taps on the block convs' zero padding, 1.5% of it" in text
    assert "the dense (Toeplitz GEMM) rows report that conv-equivalent rate" in text
    # the optional engine rows are alternated with the default arm, each repeat shown
    assert re.search(r"spatial_precision=float32, median of 1; alternated with: eager float32 in memory \(last run"
                     r".*this row / it: [0-9.]+x \| [0-9.]+ \| [0-9.]+ \|", text)
    # what a flag left out is said, not silently missing
    assert re.search(r"^Optional rows not run in this run: the Triton kernel's variants .*: pending: needs a CUDA "
                     r"device; a static-shape whole-stage compile \(--no-compile\)\.$", text, re.M)
    assert re.search(r"^\| 16x16x200 float32 scene streamed from zarr [^|]*, backend=eager, float32: not run in this "
                     r"run \(--no-zarr\) \| not run \|", text, re.M)
    assert "| compile (dynamic shapes: as the engine builds it) | float32 | not run in this run (--no-compile) |" \
        in text


def test_kernels_benchmark_required_only_writes_the_issue_s_whole_run(tmp_path: Path) -> None:
    """--required-only (what gpu_session.sh runs): every row the issue asks for, timed on the CPU where it can be,
    "pending" for the Triton rows, "not run in this run (why)" for what the CPU or a flag leaves out; the goals
    table written from the run's own rows (none measured on a CPU); the optional sections named as not run."""
    text, log = _kernels_run(tmp_path, "required.md", "--required-only", "--deadline", str(int(time.time()) + 600))
    timed = r"[0-9.]+ \[[0-9.]+, [0-9.]+\]"
    for dtype in ("float32", "bfloat16"):
        for label in ("seed-conv3d \\(eager\\)", "eager \\(conv2d channels-last\\)"):
            # ms, TFLOP/s, % of the peaks, GB/s, % of copy, Mpix/s: achieved bandwidth on every timed row
            assert re.search(rf"^\| {label} \| {dtype} \| {timed} \| [0-9.]+ \| [^|]* \| [0-9.]+ \| [0-9.]+%|n/a \| "
                             rf"[0-9.]+ \|", text, re.M), (label, dtype)
            assert re.search(rf"^\| {label}, cudnn.benchmark on \| {dtype} \| not run in this run \(cuDNN's "
                             "autotuning: CUDA only", text, re.M), (label, dtype)
        assert f"| triton (fused): backend='triton' as the engine calls it | {dtype} | pending: needs a CUDA device |" \
            in text
        assert f"| compile (dynamic shapes: as the engine builds it) | {dtype} | not run in this run (--no-compile) |" \
            in text
        for layer in ("stem \\(1->24, k7, s2\\)", "block conv \\(24->24, k7, same\\)", "reduce \\(24x97 -> 128\\)"):
            for label in ("seed-conv3d", "eager conv2d"):
                # the row's wall seconds last
                assert re.search(rf"^\| {layer} \| {label} \| {dtype} \| {timed} \| [0-9.]+ \| [0-9.]+ \| "
                                 rf"[0-9.]+% \| [0-9.]+ \|$", text, re.M), (layer, label, dtype)
            assert re.search(rf"^\| {layer} \| compile \(static shapes\) \| {dtype} \| not run in this run "
                             r"\(--no-compile\) \|", text, re.M), (layer, dtype)
    # the peaks: measured before and after the stage rows, in fixed notation, the largest used
    peaks = text.split("## Device peaks")[1].split("## The issue's goals")[0]
    assert re.search(r"^\| matmul bfloat16 TFLOP/s \| 256\^3 \| [0-9.]+ \| [0-9.]+ \|$", peaks, re.M), peaks
    assert re.search(r"^\| copy GB/s \(read \+ write\) \| 32 MiB \| [0-9.]+ \| [0-9.]+ \|$", peaks, re.M), peaks
    assert "Peaks used below (the largest of each" in peaks and "e+" not in peaks and "e-" not in peaks
    # the goals: every one named, none measured on the CPU; the float32 lines a reference, never met or missed
    goals = text.split("## The issue's goals")[1].split("## Whole spectral stage")[0]
    rows = re.findall(r"^\| ([^|]+) \| not measured in this run \(([^|]+)\) \|  \| (not measured|n/a \(reference\)) "
                      r"\|$", goals, re.M)
    assert len(rows) == 7 and any("engine >= 50 Mpix/s" in g for g, _, _ in rows), goals
    assert [g for g, _, met in rows if met != "not measured"] == [
        "fused Triton stage >= 5x faster than the Conv3d eager formulation (float32: a reference, not an issue goal)",
        "fused Triton stage >= 1.5x faster than torch.compile (float32: a reference, not an issue goal)"], goals
    assert not re.search(r"\| (yes|no) \|$", goals, re.M)
    # the engine: in memory and from zarr, alternated, three repeats each shown; what it times said
    for where in ("in memory", "streamed from zarr"):
        other = "from zarr" if where == "in memory" else "in memory"
        assert re.search(rf"^\| 16x16x200 float32 scene {where}[^|]*, backend=eager, float32, [^|]*median of 3; "
                         rf"alternated with: eager float32 {other} \(last run[^|]+ \| [0-9.]+ \| [0-9.]+, [0-9.]+, "
                         r"[0-9.]+ \| [0-9.]+ \|$", text, re.M), where
    assert "the store in page cache" in text and "normalising it with the model's per-band mean/std" in text
    assert "| backend=triton (the engine's GPU backend), bfloat16, in memory and streamed from zarr | pending" in text
    for section in ("Spatial stage", "Where the engine's time goes", "The compiled fused kernel"):
        assert re.search(rf"## {section}[^\n]*\n\nNot run in this run: --required-only", text), section
    assert "Optional rows not run in this run (--required-only)" in text
    # provenance: the commit with its state, the scene readers' versions
    assert re.search(r"^- commit: ([0-9a-f]+ \(clean\)|[0-9a-f]+-dirty \(\d+ tracked files differ from it\)|unknown)",
                     text, re.M)
    assert re.search(r"^- versions: .*zarr [0-9.]+, numcodecs [0-9.]+", text, re.M)
    # where the time went: every log line stamped with the seconds since the script's start, every step's seconds
    # in the report, the deadline's seconds left said
    stamped = [ln for ln in log.splitlines() if ln.startswith("[")]
    assert stamped and all(re.match(r"^\[ *[0-9]+\.[0-9] s\] ", ln) for ln in stamped), stamped[:3]
    assert any("start: the engine rows" in ln for ln in stamped) and "done: " in stamped[-1], stamped[-3:]
    steps = text.split("## Where this run's time went")[1].split("## Device peaks")[0]
    assert re.findall(r"^\| ([^|]+) \| [0-9.]+ \| [0-9.]+ \|$", steps, re.M)[:3] == [
        "imports, arguments, the report's placeholders",
        "the engine's scenes in memory and the zarr store (host work; the probe meanwhile)",
        "the peaks before the stage rows"], steps
    assert re.search(r"^- mode: --required-only: .*; time budget: --deadline, \d+ s left \d+ s after the script's "
                     r"start", text, re.M)


def test_staging_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/staging.py (which gpu_session.sh runs on the GPU host) on a tiny scene: both arms timed."""
    out = tmp_path / "staging.md"
    assert _run_main("staging", ["--readers", "2", "--side", "64", "--bands", "5", "--tile", "16", "--repeats", "1",
                                 "--out", str(out)]) == out
    rows = re.findall(r"^\| (each reader stages its tile \(before\)|one stager, plan order \(now\)) \| (\d+) \| "
                      r"(\d+) \| (\d+) \|$", out.read_text(), re.M)
    assert [r[0] for r in rows] == ["each reader stages its tile (before)", "one stager, plan order (now)"]
    assert re.search(r"First tile staged [0-9.]+x (sooner|later \(slower\)) in plan order", out.read_text())
    assert "(the runner's queue: readers + 1)" in out.read_text()


def test_record_scale_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/record_scale.py on a record of 6 x 6 tiles: each step timed both ways (the reads checked equal)."""
    out = tmp_path / "record.md"
    assert _run_main("record_scale", ["--tiles", "6", "--marked", "0.5", "--out", str(out)]) == out
    rows = re.findall(r"^\| (.+?) \| [0-9.]+ s \| [0-9.]+ s \| [0-9,]+x \|$", out.read_text(), re.M)
    assert rows == ["create the output store (to_zarr, compute=False)", "read the empty record",
                    "read the record, 18 of 36 tiles marked", "a cluster task's check of its own tile"]


def test_normalise_device_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/normalise_device.py (which gpu_session.sh runs on CUDA) on a tiny tile: both forms timed, the
    same bits."""
    out = tmp_path / "normalise.md"
    assert _run_main("normalise_device", ["--tile", "10", "--bands", "7", "--reps", "1", "--out", str(out)]) == out
    rows = re.findall(r"^\| (int16|float32) \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \| True \|$", out.read_text(), re.M)
    assert rows == ["int16", "float32"]


def test_spatial_epilogue_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/spatial_epilogue.py (which gpu_session.sh runs on CUDA) on a few windows: both forms timed, the
    same bits (the script raises SystemExit otherwise)."""
    out = tmp_path / "epilogue.md"
    assert _run_main("spatial_epilogue", ["--windows", "64", "--reps", "1", "--out", str(out)]) == out
    rows = re.findall(r"^\| (float32|bfloat16) \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \| True \|$", out.read_text(), re.M)
    assert rows == ["float32", "bfloat16"]


def test_gluon_trace_segments_and_programs_from_a_known_trace() -> None:
    """benchmarks/gluon_trace.py's reduction of a trace: each segment's cycles (the last one to the next step's
    start), the step, the SM clock and the programs per SM, on timestamps made up with known gaps; read as two
    warpgroups' groups of four points (step='ws'), each group's own segments and step."""
    import numpy as np

    from benchmarks.gluon_trace import programs, render, segments

    gaps = np.array([10, 20, 30, 40, 50, 60, 70, 80])  # point k -> k + 1; the last: to the next step
    n_prog, n_steps = 3, 6
    trace = np.zeros((n_prog, n_steps + 1, 8), dtype=np.int64)
    for p in range(n_prog):
        start = 1000 * p
        for s in range(n_steps):
            trace[p, s] = start + s * gaps.sum() + np.concatenate([[0], np.cumsum(gaps)[:-1]])
        end = start + n_steps * gaps.sum()
        trace[p, n_steps, :5] = [start, 2 * start, end, 2 * start + end - start, [7, 7, 9][p]]
    got = segments(trace, skip=2)
    assert [float(np.median(v)) for k, v in got.items() if k != "step"] == gaps.tolist()
    assert all(v.size == n_prog * (n_steps - 3) for v in got.values())
    assert float(np.median(got["step"])) == gaps.sum()
    ws = segments(trace, (tuple(f"A: {k}" for k in "abcd"), tuple(f"B: {k}" for k in "efgh")), skip=2)
    assert [float(np.median(ws[k])) for k in ("A: a -> A: b", "A: d -> next step", "B: e -> B: f")] == [10, 360 - 60, 50]
    assert float(np.median(ws["A: step"])) == float(np.median(ws["B: step"])) == gaps.sum()
    prog = programs(trace)
    assert prog["cycles"] == n_steps * gaps.sum() and prog["ghz"] == 1.0
    assert (prog["SMs"], prog["programs per SM (min)"], prog["programs per SM (max)"]) == (2, 1, 2)
    times = {"untraced": 1.0, "traced": 1.1, "same": True, "ideal cycles": 90.0}
    text = "\n".join(render(["# head"], [("layer", times, got, prog), ("ws", "the probe failed (a hang)")]))
    assert "| phase A issued -> phase A first wait | 20 | 20 | 20 | 6% |" in text
    assert "a step: 360 cycles (median); its wgmmas at the SM's dense rate: 90 cycles (25% of the step)" in text
    assert text.endswith("## ws\n\nNot run: the probe failed (a hang)")


def test_gluon_trace_refuses_a_cpu_by_name(tmp_path: Path) -> None:
    """Without a GPU the trace script says what it needs and writes nothing (never a made-up figure)."""
    out = tmp_path / "x.md"
    with pytest.raises(SystemExit) as e:
        _run_main("gluon_trace", ["--device", "cpu", "--out", str(out)])
    # a string code: Python prints it to stderr and exits 1
    assert isinstance(e.value.code, str), e.value.code
    assert "Hopper GPU" in e.value.code and "run it on the GPU machine" in e.value.code, e.value.code
    assert not out.exists()


def test_kernels_benchmark_gluon_step_row_restores_the_default() -> None:
    """The engine row with another Gluon form as the backend's default puts the default and the dispatcher's
    per-shape checks back afterwards, even when the row fails."""
    sys.path.insert(0, str(REPO))
    from benchmarks.kernels import _gluon_default_step
    from kernels import dispatch, spectral_gluon

    before = spectral_gluon.DEFAULT_STEP
    dispatch._GLUON_CHECKED[("shape",)] = ""
    try:
        try:
            with _gluon_default_step("pair"):
                assert spectral_gluon.DEFAULT_STEP == "pair" and not dispatch._GLUON_CHECKED
                raise RuntimeError("the row failed")
        except RuntimeError:
            pass
        assert spectral_gluon.DEFAULT_STEP == before and dispatch._GLUON_CHECKED == {("shape",): ""}
    finally:
        dispatch._GLUON_CHECKED.pop(("shape",), None)


def test_accuracy_benchmark_finds_the_shipped_scene_without_a_data_directory(tmp_path: Path, monkeypatch) -> None:
    """gpu_session.sh runs benchmarks/accuracy.py where no data directory travels (HSI_ENGINE_DATA points nowhere):
    Indian Pines must come from the shipped copy, not be reported unavailable (which trained nothing, rc 0)."""
    out = tmp_path / "acc.md"
    (tmp_path / "runs").mkdir()  # --render-only refuses a runs directory that is not there
    monkeypatch.setenv("HSI_ENGINE_DATA", str(tmp_path / "nonexistent"))
    assert _run_main("accuracy", ["--datasets", "indian_pines", "--render-only", "--runs-dir", str(tmp_path / "runs"),
                                  "--out", str(out)]) == 0
    assert "Not available" not in out.read_text() and "does not exist" not in out.read_text()


def test_kernels_benchmark_says_failed_not_pending_for_a_row_that_failed() -> None:
    """A GPU row that failed (or was not run) must not read "pending: needs a CUDA device" in a GPU run's report."""
    from benchmarks.kernels import PENDING_GPU, _engine_cell

    assert _engine_cell("triton bfloat16 {}: failed (OutOfResources: shared memory)", None) == "failed"
    assert _engine_cell("triton bfloat16 {'gluon_step': 'ws'}: not run (probe failed)", None) == "not run"
    assert _engine_cell("2048x2048x200 float32 scene in memory, backend=triton, float32: not run in this run "
                        "(--bf16-only)", None) == "not run"
    assert _engine_cell("backend=triton", None) == PENDING_GPU
    assert _engine_cell("eager float32 in memory", 2.5) == "2.5000"


def test_kernels_benchmark_timeline_says_when_the_gpu_waited() -> None:
    """The profile's timeline: kernel spans merged, idle at the start and the end, the gaps between kernels over
    1 ms and how much of them a copy covered (microseconds in, milliseconds out)."""
    from benchmarks.kernels import timeline

    kernels = [(3000, 5000), (4000, 6000), (6500, 7000), (10000, 12000)]  # 3-4 ms overlap; a 3 ms gap at 7-10
    copies = [(0, 3000), (8000, 9000)]
    t = timeline(0, 15000, kernels, copies)
    assert t == dict(wall=15.0, kernels=5.5, copies=4.0, before=3.0, after=3.0, gaps=1, gaps_ms=3.0,
                     gaps_copying_ms=1.0, gap_spans=[(7.0, 10.0)], copy_spans=[(0.0, 3.0), (8.0, 9.0)])
    assert timeline(0, 10, [], copies) == {}


def test_kernels_benchmark_collects_the_runner_s_per_tile_timeline() -> None:
    """The profile's per-tile table comes from the runner's DEBUG lines: every tile ready on the host, its compute
    queued and written, in order, and nothing of it reaches the log's other handlers."""
    import logging

    import numpy as np
    import xarray as xr

    import hsi_engine
    from benchmarks.kernels import tile_marks
    from ssrn import SSRN, SSRNConfig

    torch.manual_seed(0)
    model = SSRN(SSRNConfig(bands=9, classes=3)).eval()
    da = xr.DataArray(np.random.default_rng(0).random((9, 12, 20), dtype=np.float32), dims=("band", "y", "x"))
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    root = logging.getLogger()
    keep = Keep(logging.DEBUG)
    root.addHandler(keep)
    try:
        with tile_marks() as tiles:
            hsi_engine.classify(da, model, tile=8, progress=False)
    finally:
        root.removeHandler(keep)
    assert sorted(tiles) == list(range(6))  # 2 x 3 tiles of 8 pixels
    for marks in tiles.values():
        assert marks["ready on the host"] <= marks["compute queued"] <= marks["written"] + 10, marks
        assert "copy queued" not in marks  # nothing is copied on the CPU
    assert not [r for r in seen if r.name == "hsi_engine.runner" and r.levelno == logging.DEBUG]
    assert logging.getLogger("hsi_engine.runner").level == logging.NOTSET


def test_demo_precision_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/demo_precision.py (README's bf16 CPU figures): one run per precision, both timed and scored.

    It runs ``hsi-engine demo --precision float32|bfloat16`` as users do, so it is also the demo's bf16 test
    (bf16 is slow on CPUs without bf16 matrix units: the demo is not run in bf16 twice): the report says
    bfloat16 ran (the benchmark refuses a report that says otherwise), held-out OA stays above 90 % (the
    table's OA column), and some but few pixels change class (bf16 really ran, and stays close)."""
    out = tmp_path / "demo.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_precision.py"), "--runs", "1", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\| 1 \| (float32|bfloat16) \| [0-9,]+ \| 9\d\.\d\d \|", out.read_text(), re.M)
    assert rows == ["float32", "bfloat16"]
    changed = re.search(r"= \*\*[0-9.]+x\*\*; (\d+) of 21,025 pixels change class", out.read_text())
    assert changed and 0 < int(changed.group(1)) < 0.02 * 21025, changed


def test_kernels_benchmark_reports_no_percentage_above_a_measured_peak() -> None:
    """On a CPU without bfloat16 matrix units the bf16 'peak' matmul ran 60x slower than the float32 stage, and the
    report printed '10065.8%': a rate above the measured peak reads n/a, with the reason under the table."""
    from benchmarks.kernels import render

    from benchmarks.kernels import PEAK_BF16, PEAK_FP32, Report

    rep = Report(head=[], pixels=1000, stage_flops=60_000_000,
                 peaks=[("before", PEAK_FP32, "1024^3", 0.04), ("before", PEAK_BF16, "1024^3", 0.0006)])
    rep.stage_rows = [dict(key="eager", label="eager", dtype="float32", t=(2.0, 1.9, 2.1), note=""),
                      dict(key="eager", label="eager", dtype="bfloat16", t=(12.0, 11.0, 13.0), note="")]
    text = render(rep)
    assert "| 0.0300 | n/a / 75.0% |" in text and "| 0.0050 | n/a / n/a |" in text
    assert "n/a: the formulation ran faster than the matmul measured" in text
    assert "%" not in text.split("n/a:")[1].split("\n\n")[0]


def test_conv_relu_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/conv_relu_cpu.py at a tiny size: the float32 rows timed; the bf16 rows timed where oneDNN has bf16,
    else "not run" with the reason (its fused ops raise there, and the engine runs the plain layers in both arms)."""
    from kernels.spectral import _onednn_bf16

    out = tmp_path / "conv.md"
    assert _run_main("conv_relu_cpu", ["--side", "16", "--pixels", "32", "--reps", "1", "--out", str(out)]) == out
    text = out.read_text()
    timed = r" \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \| "
    for layer in ("conv \\+ ReLU", "conv \\+ identity \\+ ReLU"):
        assert re.search(rf"^\| {layer} \| float32{timed}", text, re.M), f"no timed float32 {layer} row"
    assert re.search(r"^\| float32 \| [0-9,]+ \| [0-9,]+ \| [0-9,]+ \| ", text, re.M), "no float32 engine row"
    if _onednn_bf16():
        # (this branch's pattern asked for a backslash before '+': it failed on the first CPU with oneDNN bf16)
        for layer in ("conv \\+ ReLU", "conv \\+ identity \\+ ReLU"):
            assert re.search(rf"^\| {layer} \| bfloat16{timed}", text, re.M), f"no timed bfloat16 {layer} row"
        assert re.search(r"^\| bfloat16 \| [0-9,]+ \| [0-9,]+ \| [0-9,]+ \| ", text, re.M), "no bfloat16 engine row"
    else:
        isa = torch.backends.cpu.get_cpu_capability()
        why = f"not run: oneDNN has no bf16 on this CPU (ISA {isa})"
        assert text.count(f"| bfloat16 | {why} |") == 3  # both layers and the engine row


def _refusal(capsys, module: str, argv: list[str]) -> tuple[object, str]:
    """The exit code and message of ``benchmarks.<module>.main(argv)``, which must refuse before any work."""
    mod = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    code = e.value.code
    return code, capsys.readouterr().err + (code if isinstance(code, str) else "")


@pytest.mark.parametrize("module, argv, message", [
    ("kernels", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("kernels", ["--pixels", "-1"], "argument --pixels: expected a positive integer, got -1"),
    ("kernels", ["--pixels", "0"], "argument --pixels: expected a positive integer, got 0"),
    ("kernels", ["--engine-side", "0"], "argument --engine-side: expected a positive integer, got 0"),
    ("kernels", ["--device", "cpu", "--gluon-forms", "layer,bogus"], "--gluon-forms: unknown ['bogus']; expected"),
    ("kernels", ["--peak-side", "4096,0"], "argument --peak-side: expected positive integers separated by commas"),
    ("kernels", ["--engine-reps", "2"], "argument --engine-reps: expected an integer >= 3 (a median of 3 at least)"),
    ("kernels", ["--required-only", "--quick"], "--required-only runs the per-layer rows the issue asks for"),
    ("chunks_cpu", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("conv_relu_cpu", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("staging", ["--queue", "x"], "argument --queue: expected a positive integer, got 'x'"),
    ("accuracy", ["--render-only", "--runs-dir", "/nonexistent/runs"], "/nonexistent/runs is not a directory"),
    ("chunks_cpu", ["--pair", "512"], "argument --pair: expected a size other than 512"),
    ("scene", ["--size", "0"], "argument --size: expected a positive integer, got 0"),
    ("scene", ["--size", "8", "--patch-pixels", "65"], "argument --patch-pixels: expected at most --size^2 = 64 "
                                                        "pixels, got 65"),
    ("scene", ["--backends", "compile,eagr"], "argument --backends: unknown backend(s) ['eagr']; expected some of"),
    ("scene", ["--bands", "5"], "argument --bands: expected an integer >= 7 (the stem convolution's kernel), got 5"),
    ("formulations", ["--pixels", "48"], "argument --pixels: expected an integer >= 49 (one 7x7 patch for the "
                                         "Conv3d rows), got 48"),
    ("formulations", ["--repeat", "0"], "argument --repeat: expected a positive integer, got 0"),
    ("normalise", ["--tile", "0"], "argument --tile: expected a positive integer, got 0"),
    ("normalise", ["--bands", "0"], "argument --bands: expected a positive integer, got 0"),
    ("normalise", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("host", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("host", ["--readers", "2", "0"], "argument --readers: expected a positive integer, got 0"),
    ("spatial_precision", ["--time-side", "-5"], "argument --time-side: expected an integer >= 0 (0: no timing), "
                                                 "got -5"),
    ("spatial_precision", ["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    ("spatial_precision", ["--backend", "foo"], "argument --backend: invalid choice: 'foo'"),
    ("compile_cpu", ["--size", "0"], "argument --size: expected an integer >= 1 (a scene of at least one pixel), "
                                     "got 0"),
    ("writer_memory", ["--sizes", "1000", "0"], "argument --sizes: expected a positive integer, got 0"),
])
def test_benchmarks_refuse_bad_arguments(capsys, tmp_path: Path, module: str, argv: list[str], message: str) -> None:
    """A bad argument ends the run with argparse's usage error (exit 2) naming it: no traceback, nothing written."""
    code, err = _refusal(capsys, module, [*argv, "--out", str(tmp_path / "x.md")])
    assert code == 2 and message in err, err
    assert not (tmp_path / "x.md").exists()


def test_accuracy_benchmark_refuses_no_seeds_before_making_its_runs_dir(capsys, tmp_path: Path) -> None:
    """--seeds 0 trained nothing and wrote "Not run" everywhere (exit 0), after making the runs directory."""
    runs = tmp_path / "runs"
    code, err = _refusal(capsys, "accuracy", ["--seeds", "0", "--runs-dir", str(runs), "--out", str(tmp_path / "x.md")])
    assert code == 2 and "argument --seeds: expected a positive integer, got 0" in err, err
    assert not runs.exists() and not (tmp_path / "x.md").exists()


def test_writer_memory_benchmark_says_why_a_case_failed(capsys, tmp_path: Path, monkeypatch) -> None:
    """A case's process that fails ends the run with its own error (it read a bare CalledProcessError)."""
    import benchmarks.writer_memory as wm

    def failed(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nMemoryError: no room for the map\n")

    monkeypatch.setattr(wm.subprocess, "run", failed)
    with pytest.raises(SystemExit) as e:
        wm.main(["--sizes", "64", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "x.md")])
    assert "the 64^2 case (GDAL default cache) failed (exit 1)" in e.value.code, e.value.code
    assert "MemoryError: no room for the map" in e.value.code and not (tmp_path / "x.md").exists()

    def ran(cmd, **kw):  # the report of cases that ran: its paragraph apart from the command's bullet
        case = dict(n=64, capped=cmd[-1].endswith(",1"), base_mib=90, tiles_mib=100, commit_mib=110, commit_s=0.1,
                    total_s=0.2)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(case) + "\n", "")

    monkeypatch.setattr(wm.subprocess, "run", ran)
    wm.main(["--sizes", "64", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "x.md")])
    assert re.search(r"^- command: `[^\n]*`\n\n16 classes, ", (tmp_path / "x.md").read_text(), re.M)
    assert "| 64^2 | capped | 90 | 100 | 110 | 0.1 | 0.2 |" in (tmp_path / "x.md").read_text()


def test_scene_benchmark_summary_takes_the_eager_row_by_name() -> None:
    """With --backends compile,eager the summary gave compile's ratio as eager's: the eager row is found by name,
    and a run without one says so rather than name another backend's figure."""
    from benchmarks.scene import engine_lines

    def row(backend: str, pps: float, rss: float, **kw) -> dict:
        return dict(backend=backend, scene="16 x 16", pps=pps, patch_agree="16/16", same=True, peak_rss_mb=rss, **kw)

    big = dict(scene="64 x 64", pps=600.0, peak_rss_mb=330.0)
    rows = [row("compile", 60.0, 900.0), row("eager", 510.0, 300.0),
            row("eager", 520.0, 310.0, label="engine eager, block cache on")]
    text = "\n".join(engine_lines(rows, big, 100.0, "eager"))
    assert "Engine eager / patch mode: 5.1x" in text and "Peak RSS 16x / 1x (eager): 1.10" in text, text
    assert "| engine compile (classify_to_file -> zarr) | 16 x 16 | 60 | 0.6 | patch-mode agreement 16/16; " \
           "identical to eager: True | 900 |" in text
    text = "\n".join(engine_lines(rows[:1], big, 100.0, "compile"))
    assert "No engine eager row (--backends has no eager)" in text and "no 16x / 1x RSS ratio" in text, text
    assert "Engine eager / patch mode" not in text and "Peak RSS 16x / 1x (eager):" not in text


def test_scene_cache_is_keyed_by_seed() -> None:
    """scene.py and compile_cpu.py cache their scenes in one folder with different seeds: a path per seed."""
    from benchmarks.scene import scene_path

    assert scene_path(Path("/w"), 256, 200, 0) != scene_path(Path("/w"), 256, 200, 2)


def test_cpu_isa_says_when_onednn_emulates_bf16(monkeypatch) -> None:
    """oneDNN's probe says bf16 on any AVX-512 CPU; without AVX512_BF16 or AMX-BF16 it emulates it (several times
    slower than float32), which the report's ISA line must not call "yes"."""
    import hsi_engine.fused as fused
    import kernels.spectral as spectral
    from benchmarks._common import cpu_isa

    flags: dict[str, bool | None] = {}
    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: True)
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: flags["amx"])
    monkeypatch.setattr(fused, "_torch_cpu_probe", lambda name: flags["probe"])
    monkeypatch.setattr(fused, "_cpuinfo_has", lambda flag: flags["cpuinfo"])
    flags.update(amx=False, probe=False, cpuinfo=False)
    assert cpu_isa().endswith("oneDNN bf16 emulated (no AVX512_BF16 or AMX-BF16: slower than float32)")
    flags.update(probe=None, cpuinfo=True)
    assert cpu_isa().endswith("oneDNN bf16 yes (AVX512_BF16)")
    flags.update(amx=True)
    assert cpu_isa().endswith("oneDNN bf16 yes (AMX-BF16)")
    flags.update(amx=False, probe=None, cpuinfo=None)
    assert "whether in hardware is unknown" in cpu_isa()
    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: False)
    assert cpu_isa().endswith("oneDNN bf16 no")


def test_kernels_benchmark_quick_says_why_there_are_no_layer_rows() -> None:
    """--quick skips the per-layer rows: the section says so instead of showing an empty table."""
    from benchmarks.kernels import Report, render

    text = render(Report(head=[], skipped={"layers": "--quick skips the per-layer rows"}))
    assert "## Per layer\n\nNot run in this run: --quick skips the per-layer rows.\n" in text
    assert "| layer | formulation |" not in text


def _gpu_report(**engine):
    """A made-up CUDA run's report: seed Conv3d 12 ms (cudnn.benchmark off) and 10 ms (on), the fused stage 1.5 ms,
    compile 4 ms (as the engine builds it) and 3.5 ms (static), bf16 peaks 700 before and 720 after."""
    from benchmarks.kernels import FUSED_LABEL, PEAK_BF16, PEAK_COPY, Report

    rep = Report(head=[], cuda=True, pixels=65536, stage_flops=3_757_392 * 65536, peaks_after="",
                 peaks=[("before", PEAK_BF16, "8192^3", 700.0), ("after", PEAK_BF16, "8192^3", 720.0),
                        ("before", PEAK_BF16, "16384^3", 690.0), ("before", PEAK_COPY, "1024 MiB", 4231.25)])
    for key, label, ms in (("seed", "seed-conv3d (eager)", 12.0), ("seed+bench", "seed-conv3d (eager), cudnn.benchmark "
                           "on", 10.0), ("fused", FUSED_LABEL, 1.5), ("compile", "compile (max-autotune)", 4.0),
                           ("compile-static", "compile (max-autotune, static shapes)", 3.5)):
        rep.stage_rows.append(dict(key=key, label=label, dtype="bfloat16", t=(ms, ms, ms), bytes=43_000_000, note="",
                                   required=key != "compile-static"))
    rep.stage_rows.append(dict(key="fused", label=FUSED_LABEL, dtype="float32", t=None, required=True,
                               note="failed: OutOfResources: shared memory"))
    rep.engine_rows.append(dict(key="triton:bfloat16:memory", required=True, **{
        "desc": "2048x2048x200 float32 scene in memory, backend=triton, bfloat16, median of 3", **engine}))
    rep.engine_rows.append(dict(key="triton:bfloat16:zarr", mpix=None, reps=[], required=True,
                                why="not run in this run (--no-zarr)", desc="1024x1024x200 float32 scene streamed "
                                "from zarr, backend=triton, bfloat16: not run in this run (--no-zarr)"))
    return rep


def test_kernels_benchmark_goals_come_from_the_run_s_own_rows() -> None:
    """The goals table: the fair baselines (the faster seed-Conv3d row of cudnn.benchmark off / on, the faster
    compile row), the largest peak measured before or after, each goal's rows named, met or not; a goal whose rows
    the run lacks says "not measured in this run" and why (a failed row, a flag)."""
    from benchmarks.kernels import goals, render

    rep = _gpu_report(mpix=20.49, reps=[19.8, 20.49, 20.6])
    got = {g: (fig, rows, met) for g, fig, rows, met in goals(rep)}
    five = got["fused Triton stage >= 5x faster than the Conv3d eager formulation"]
    assert five[0].startswith("10.000 / 1.500 ms = **6.67x**; the other baseline row: 12.000 ms") and five[2] == "yes"
    assert "`seed-conv3d (eager), cudnn.benchmark on`" in five[1]
    compile_ = got["fused Triton stage >= 1.5x faster than torch.compile"]
    assert compile_[0].startswith("3.500 / 1.500 ms = **2.33x**") and compile_[2] == "yes"
    tf = 3_757_392 * 65536 / 1.5e-3 / 1e12
    assert got[">= 30% of the measured bf16 matrix peak (fused stage, bf16)"] == (
        f"{tf:.1f} TFLOP/s of 720.0 = **{100 * tf / 720:.1f}%**",
        "`triton (fused): backend='triton' as the engine calls it`, bfloat16; the peak table's largest bf16 matmul",
        "no")
    fp32 = got["fused Triton stage >= 5x faster than the Conv3d eager formulation (float32: a reference, not an "
               "issue goal)"]
    assert fp32 == ("not measured in this run (fused stage: failed: OutOfResources: shared memory)", "",
                    "n/a (reference)")
    mem = got["engine >= 50 Mpix/s on 200 bands (backend=triton, bf16, scene held in memory)"]
    assert mem[0] == "**20.490 Mpix/s** (median; repeats 19.800, 20.490, 20.600)" and mem[2] == "no"
    assert got["engine >= 50 Mpix/s on 200 bands (backend=triton, bf16, scene streamed from zarr)"][0] == \
        "not measured in this run (not run in this run (--no-zarr))"
    text = render(rep)
    assert "| matmul bfloat16 TFLOP/s | 8192^3 | 700.0 | 720.0 |" in text and "e+" not in text
    assert "| copy GB/s (read + write) | 1024 MiB | 4231.2 |  |" in text
    # GB/s and % of copy on a stage row: 43 MB in 1.5 ms
    assert re.search(r"\| triton \(fused\): backend='triton' as the engine calls it \| bfloat16 \| "
                     r"1.500 \[1.500, 1.500\] \| [0-9.]+ \| [0-9.]+% / [0-9.]+% \| 28.667 \| 0.7% \|", text)


def test_kernels_benchmark_names_the_required_rows_it_lacks() -> None:
    """A required row that failed (or that the budget cut, or the run never reached) makes the run incomplete (the
    script exits 3, gpu_session.sh with it); one a flag left out, or pending on the CPU, does not."""
    from benchmarks.kernels import NOT_REACHED, incomplete

    rep = _gpu_report(mpix=None, reps=[], why=NOT_REACHED, desc="in memory: " + NOT_REACHED)
    bad = incomplete(rep)
    assert any("failed: OutOfResources" in b for b in bad) and any(NOT_REACHED in b for b in bad)
    assert not any("--no-zarr" in b for b in bad) and len(bad) == 2


def test_kernels_benchmark_engine_model_normalises() -> None:
    """The engine rows' model carries per-band mean/std, as every real model does, so the engine times the
    normalisation (without them it took the scene as normalised and only copied it); the scale checks pass."""
    import warnings

    from benchmarks.kernels import _engine_model, _random_scene
    from hsi_engine import UnnormalisedInputWarning
    from hsi_engine.api import _Job

    model = _engine_model()
    mean, std = model.meta["mean"], model.meta["std"]
    assert len(mean) == len(std) == model.config.bands == 200 and len(set(mean)) > 1 and len(set(std)) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        job = _Job(_random_scene(16, "float32"), model, tile=None, device="cpu", backend="eager", precision="float32",
                   nodata=None)
    assert job.mean is not None and job.std is not None
    assert _engine_model("uint16").meta["mean"] == [6000.0] * 200


def test_kernels_benchmark_cudnn_benchmark_rows() -> None:
    """The cudnn.benchmark-on rows (a child process on CUDA: cuDNN's plan cache ignores the flag) for the stage and
    each layer, in the parent's row form; the flag is the child's to keep (put back here)."""
    from benchmarks.kernels import cudnn_benchmark_rows

    saved = torch.backends.cudnn.benchmark
    try:
        rows = cudnn_benchmark_rows(23, 37, ["float32"], True, "cpu")
    finally:
        torch.backends.cudnn.benchmark = saved
    assert [(r["kind"], r["key"]) for r in rows[:2]] == [("stage", "seed+bench"), ("stage", "eager+bench")]
    assert [r["layer"].split(" ")[0] for r in rows[2:]] == ["stem", "stem", "block", "block", "reduce", "reduce"]
    assert all(len(r["t"]) == 3 and r["t"][0] > 0 and r["bytes"] > 0 and r["dtype"] == "float32" for r in rows)


def test_kernels_benchmark_float32_goals_are_a_reference_and_a_dynamic_compile_says_so() -> None:
    """The issue's goals name no dtype and every earlier table measured them in bf16: the float32 lines are a
    reference (met: n/a), never a missed goal (fp32 Triton 27.5 ms against Conv3d's 19.7 read as one). A compile
    baseline with no static-shape compile beside it says that one was not run (it may be faster)."""
    from benchmarks.kernels import FUSED_LABEL, goals

    rep = _gpu_report(mpix=20.49, reps=[19.8, 20.49, 20.6])
    rep.stage_rows = [r for r in rep.stage_rows if r["key"] != "compile-static" and r["dtype"] == "bfloat16"]
    for key, label, ms in (("seed", "seed-conv3d (eager)", 19.7), ("fused", FUSED_LABEL, 27.5)):
        rep.stage_rows.append(dict(key=key, label=label, dtype="float32", t=(ms, ms, ms), bytes=1, note="",
                                   required=True))
    got = {g: (fig, met) for g, fig, _, met in goals(rep)}
    fp32 = got["fused Triton stage >= 5x faster than the Conv3d eager formulation (float32: a reference, not an issue "
               "goal)"]
    assert fp32 == ("19.700 / 27.500 ms = **0.72x**; the other baseline row was not measured", "n/a (reference)")
    fig, met = got["fused Triton stage >= 1.5x faster than torch.compile"]
    assert fig.startswith("4.000 / 1.500 ms = **2.67x**; the static-shape compile (perhaps faster, which would lower "
                          "this ratio): not run in this run (an optional row") and met == "yes", fig


def test_kernels_benchmark_gluon_probe_runs_what_this_process_would(monkeypatch) -> None:
    """The child process's probe of the Gluon kernel runs what the main process would: the dispatcher's self-check
    (its check pixels, wsp on two programs), then all the stage's pixels on two programs (each program a long stream
    of blocks) and on the default grid (the stage row's and the engine's call), each against the reference; a
    kernel that runs but differs (NaN included) fails it. Run here with the kernel faked (it needs a Hopper GPU)."""
    import benchmarks.kernels as bk
    import kernels.spectral_gluon as sg
    from kernels.spectral import spectral_stage_reference

    calls = []

    def fake(x, prog, *, waits, identity, step, programs):
        calls.append((x.shape[0], programs, waits, identity, step))
        out = spectral_stage_reference(x.float(), prog)
        return out * float("nan") if bad else out.to(x.dtype)

    monkeypatch.setattr(sg, "spectral_stage_gluon", fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    code = bk._GLUON_PROBE.format(repo=str(REPO), bands=23, waits="layer", identity="epilogue", step="wsp",
                                  pixels=700, device="cpu")
    path = sys.path[:]
    try:
        bad = False
        exec(compile(code, "<probe>", "exec"), {})
        assert [c[:2] for c in calls] == [(1024, 2), (700, 2), (700, None)], calls
        assert {c[2:] for c in calls} == {("layer", "epilogue", "wsp")}
        bad = True
        with pytest.raises(SystemExit, match="the kernel ran but differs from the reference: max rel. diff nan"):
            exec(compile(code, "<probe>", "exec"), {})
    finally:
        sys.path[:] = path


def test_kernels_benchmark_failed_probe_keeps_the_gluon_kernel_out_of_this_process(monkeypatch) -> None:
    """After the probe failed in its child process, backend='triton' in the main process runs the Triton kernel for
    the stage's and the engine's program shapes: the dispatcher's per-shape check is filed as failed with the
    probe's reason, under the key fused_stage itself files it (checked by letting fused_stage file one), so neither
    the Gluon self-check nor the Gluon kernel runs; the stage row's note names the reason."""
    import benchmarks.kernels as bk
    import kernels.spectral as ks
    import kernels.spectral_gluon as sg
    from kernels import dispatch
    from kernels.spectral import _random_program

    prog = _random_program(23, 24, 16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(40, 23).to(torch.bfloat16)
    ran = []
    monkeypatch.setattr(sg, "gluon_unsupported", lambda *a, **k: None)  # as on a Hopper GPU
    monkeypatch.setattr(sg, "_run", lambda *a, **k: ran.append("gluon") or torch.zeros(40, 16))
    monkeypatch.setattr(ks, "spectral_stage_triton", lambda *a, **k: ran.append("triton") or torch.zeros(40, 16))
    monkeypatch.setattr(dispatch, "_gluon_disagrees", lambda *a, **k: ran.append("self-check") or "")
    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    monkeypatch.setattr(dispatch, "_GLUON_FORM", {})
    dispatch.fused_stage(x, prog)  # the dispatcher files the shape itself: the key kernels.py must use
    assert ran == ["self-check", "gluon"] and list(dispatch._GLUON_CHECKED) == [bk.gluon_key(prog, torch.bfloat16,
                                                                                               x.device)]
    dispatch._GLUON_CHECKED.clear()
    dispatch._GLUON_FORM.clear()
    ran.clear()
    why = "the Gluon kernel's probe in a child process failed (no result within 60 s): this process never ran it"
    keys = bk.skip_gluon(why, [prog], "cpu")
    assert len(keys) == 2 and all(dispatch._GLUON_CHECKED[k] == why for k in keys)  # bf16 and fp16
    dispatch.fused_stage(x, prog)
    dispatch.fused_stage(x.half(), prog)
    assert ran == ["triton", "triton"], ran
    assert bk._fused_note(torch.bfloat16).startswith("; the Triton kernel, not the Gluon kernel: " + why)


def test_kernels_benchmark_rows_stopped_mid_way_and_the_order_of_the_compiles(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """--rows runs only the named groups (the others say so); the float32 whole-stage compile runs after the engine
    rows, the bf16 one before them; a row the run ends in reads "stopped during this row": on disk as soon as it
    starts (a kill or a hang leaves that), "after N s" when a signal stops it (the step's timeout; exit 143, the
    report finished); every log line and row carries its seconds. torch.compile is faked: a compile's cost is not
    what this checks."""
    import os
    import signal

    import benchmarks.kernels as bk
    from kernels import dispatch
    from kernels.spectral import spectral_stage_reference

    out = tmp_path / "rows.md"
    seen = {}

    def compiled(device_type):
        def stage(x, prog):
            if x.dtype == torch.float32 and "disk" not in seen:  # the float32 compile: the step's timeout hits
                seen["disk"] = out.read_text()
                os.kill(os.getpid(), signal.SIGTERM)
            return spectral_stage_reference(x, prog)
        return stage

    monkeypatch.setattr(dispatch, "_compiled", compiled)
    monkeypatch.setattr(dispatch, "_compile_failure", lambda device_type: None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        bk.main(["--device", "cpu", "--required-only", "--rows", "compile,engine,layer-compile", "--pixels", "64",
                 "--engine-side", "16", "--reps", "1", "--no-zarr", "--deadline", str(time.time() + 600),
                 "--out", str(out)])
    assert e.value.code == 143 and signal.getsignal(signal.SIGTERM) == handler
    row = "| compile (dynamic shapes: as the engine builds it) | float32 | not run in this run (stopped during this row"
    disk = seen["disk"]
    assert f"{row}: it started " in disk and "did not finish: a timeout's kill, a hang or a crash" in disk
    text = out.read_text()
    assert re.search(re.escape(row) + r" after \d+ s: SIGTERM, \d+ s into the run: the step's timeout, or a kill\) \|",
                     text), text
    assert re.search(r"^\*\*Stopped during the stage row `compile \(dynamic shapes: as the engine builds it\)`, "
                     r"float32\*\*, \d+ s into the run, after \d+ s of it \(SIGTERM", text, re.M)
    steps = re.findall(r"^\| (the [^|]+) \| [0-9.]+ \| [0-9.]+ \|$", text, re.M)
    assert steps == ["the engine's scenes in memory and the zarr store (host work; the probe meanwhile)",
                     "the whole stage's torch.compile, bfloat16",
                     "the engine rows (each arm built, run once untimed, then the arms alternated)",
                     "the whole stage's torch.compile, float32"], steps
    assert re.search(r"^\| compile \(dynamic shapes: as the engine builds it\) \| bfloat16 \| [0-9.]+ \[.*\| "
                     r"[0-9.]+ \|$", text, re.M), "the bf16 compile row, timed, with its seconds"
    assert re.search(r"^\| 16x16x200 float32 scene in memory[^|]+ \| [0-9.]+ \| [0-9.]+, [0-9.]+, [0-9.]+ \| "
                     r"[0-9.]+ \|$", text, re.M), "the engine row with its seconds"
    assert "| seed-conv3d (eager) | float32 | not run in this run (--rows compile,engine,layer-compile: not among " \
           "the rows asked for) |" in text
    assert re.search(r"^\| stem \(1->24, k7, s2\) \| compile \(static shapes\) \| bfloat16 \| not run in this run "
                     r"\(not reached", text, re.M)
    log = capsys.readouterr()
    assert re.search(r"^\[ *[0-9.]+ s\] start: the stage row `compile", log.out, re.M)
    assert "stopped by SIGTERM" in log.err


def test_kernels_benchmark_budget_counts_from_the_import_and_the_deadline() -> None:
    """--budget-s counts from the script's start (its imports are in the step's timeout too); --deadline is an
    absolute time; the earlier binds, and a row that does not fit names it."""
    from benchmarks.kernels import T0, Budget

    assert Budget(None).why_not(1e9) is None
    b = Budget(int(time.time() - T0) + 100, deadline=time.time() + 40)
    assert 35 < b.left() <= 40 and b.why_not(30) is None
    assert re.match(r"time budget: \d+ s of --budget-s \d+ and --deadline left \d+ s into the run, this needs about "
                    r"60 s", b.why_not(60))
    assert Budget(1, deadline=None).left() < 1


def test_kernels_benchmark_child_rows_arrive_one_by_one(tmp_path: Path) -> None:
    """The cudnn.benchmark child sends each row as it is timed: a child killed by its timeout (or failing) keeps
    the rows it sent, and the error says how many."""
    from benchmarks.kernels import stream_rows

    got = []
    child = ("import json, sys, time\nfor i in range(2):\n    print('ROW ' + json.dumps({'i': i}), flush=True)\n"
             "print('noise')\nsys.stderr.write('warming up\\n')\n")
    with pytest.raises(RuntimeError, match=r"no result within 2 s \(killed after 2 rows\)"):
        stream_rows([sys.executable, "-c", child + "time.sleep(60)\n"], 2, got.append)
    assert got == [{"i": 0}, {"i": 1}]
    got.clear()
    with pytest.raises(RuntimeError, match=r"^MemoryError: boom \(after 2 rows\)$"):
        stream_rows([sys.executable, "-c", child + "sys.exit('MemoryError: boom')\n"], 30, got.append)
    assert len(got) == 2
    assert stream_rows([sys.executable, "-c", child], 30, got.append) == 2


def test_kernels_benchmark_reads_the_sm_clock_under_load() -> None:
    """The SM clock is sampled in the background while a matmul runs (an idle GPU's clock read like throttling):
    the readings' minimum / median / maximum, the maximum SM clock, the highest temperature and power."""
    from benchmarks.kernels import ClockSampler, clock_summary

    fake = ("import time\nfor mhz in (1755, 1980, 1980):\n    print(f'{mhz}, 1980, 4{mhz % 7}, 512.25', flush=True)\n"
            "time.sleep(30)\n")
    with ClockSampler(cmd=[sys.executable, "-c", fake]) as smi:
        time.sleep(1.0)
    assert len(smi.lines) == 3, smi.lines
    assert clock_summary(smi.lines + ["[N/A], 1980, 40, 500"]) == (
        "SM clock 1755 / 1980 / 1980 MHz (min / median / max of 3 readings), max SM clock 1980 MHz, temperature up "
        "to 46 C, power up to 512 W")
    assert clock_summary([]) is None
    with ClockSampler(cmd=["/nonexistent/nvidia-smi"]) as smi:
        pass
    assert smi.lines == []


def _session(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """gpu_session.sh run with a fake python3 on PATH that logs its arguments and succeeds (failing the zarr import
    where SHIM_NO_ZARR is set): which commands, with which options, the script would run."""
    import os

    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    shim = bin_ / "python3"
    shim.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "if os.environ.get('SHIM_NO_ZARR') and any('import zarr, dask, numcodecs' in a\n"
                    "                                          for a in sys.argv):\n"
                    "    sys.exit(1)\n")
    shim.chmod(0o755)
    log.write_text("")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
                                   TMPDIR=str(tmp_path), DEVICE="cpu", **env))
    return proc, [json.loads(ln) for ln in log.read_text().splitlines()]


def test_gpu_session_workers_deadline_and_the_zarr_check(tmp_path: Path) -> None:
    """gpu_session.sh: the GPU tests on TEST_WORKERS (default 12) workers; the benchmark gets an absolute
    --deadline (its step's timeout less 30 s) and BENCH_ARGS as given ("" the full sweep); where the benchmark's
    rows stream a zarr store, a machine without zarr, dask and numcodecs stops the call at once (SETUP FAILED)."""
    skip = dict(SEEDS="0", SKIP_COMPILE="1", SKIP_TRACE="1", SKIP_SPATIAL="1", SKIP_STAGING="1", SKIP_NORMALISE="1",
                SKIP_EPILOGUE="1")
    proc, calls = _session(tmp_path, dict(skip, SKIP_BENCH="1", SHIM_NO_ZARR="1"))  # no bench: zarr not needed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pytest_ = [c for c in calls if c[:2] == ["-m", "pytest"]]
    assert len(pytest_) == 1 and pytest_[0][pytest_[0].index("-n") + 1] == "12", pytest_
    proc, calls = _session(tmp_path, dict(skip, SKIP_BENCH="1", TEST_WORKERS="16"))
    assert [c[c.index("-n") + 1] for c in calls if c[:2] == ["-m", "pytest"]] == ["16"]

    proc, calls = _session(tmp_path, dict(BENCH_ONLY="1", SHIM_NO_ZARR="1"))  # --required-only: the zarr arm
    env_txt = (tmp_path / "out" / "env.txt").read_text()
    assert proc.returncode == 1 and "SETUP FAILED: zarr, dask or numcodecs" in env_txt, env_txt
    assert not [c for c in calls if c and c[0] == "benchmarks/kernels.py"]

    t0 = time.time()
    proc, calls = _session(tmp_path, dict(BENCH_ONLY="1", SHIM_NO_ZARR="1", BENCH_TIMEOUT="200",
                                          BENCH_ARGS="--required-only --rows fused,compile"))
    bench = [c for c in calls if c and c[0] == "benchmarks/kernels.py"]
    assert proc.returncode == 0 and len(bench) == 1, proc.stdout + proc.stderr
    deadline = float(bench[0][bench[0].index("--deadline") + 1])
    assert t0 + 200 - 30 - 5 <= deadline <= time.time() + 200 - 30 and "--budget-s" not in bench[0]
    assert bench[0][bench[0].index("--rows") + 1] == "fused,compile"
    proc, calls = _session(tmp_path, dict(BENCH_ONLY="1", BENCH_ARGS=""))
    bench = [c for c in calls if c and c[0] == "benchmarks/kernels.py"]
    assert "--required-only" not in bench[0] and bench[0][-2:] == ["--out", str(tmp_path / "out" / "kernels-gpu.md")]


def test_gpu_plan_gives_the_gpu_tests_time_for_their_workers() -> None:
    """The plan's GPU-test call: 139 tests took 119 s on 12 workers and ran out of 175 s on 6; the plan gives the
    step at least 240 s, and its call a timeout_s above that."""
    plan = (REPO / "benchmarks" / "results" / "kernels-h200.md").read_text().split("\n## ")[1]
    assert plan.startswith("Next GPU call")
    step = [int(v) for v in re.findall(r"TEST_TIMEOUT=(\d+)", plan)]
    call = [int(v) for v in re.findall(r"tests[^`]*`?, `timeout_s` (\d+)", plan)]
    assert step and min(step) >= 240 and call and min(call) >= max(step) + 30, (step, call)
    assert "TEST_WORKERS=" not in plan or "TEST_WORKERS=12" in plan


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_gpu_session_fails_fast_without_cuda(tmp_path: Path) -> None:
    """gpu_session.sh stops in seconds where torch sees no GPU (it ran every step, the benchmark on the CPU, rc 0),
    says why, and leaves no temporary zarr directory; the benchmark step passes --device and --required-only."""
    import os
    import time

    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OUT=str(tmp_path / "out"),
                                                           TMPDIR=str(tmp_path)))
    assert proc.returncode == 1 and time.monotonic() - t0 < 60, proc.stdout + proc.stderr
    assert "sees no CUDA device" in (tmp_path / "out" / "env.txt").read_text()
    assert not list(tmp_path.glob("kernels-zarr.*"))
    script = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    assert 'benchmarks/kernels.py --device "$DEVICE"' in script and "${BENCH_ARGS---required-only}" in script


def test_gpu_report_names_take_the_gpu_model() -> None:
    """kernels.py and spatial_epilogue.py name a GPU's reports by the same word: its model, not its memory."""
    from benchmarks._common import gpu_label

    assert gpu_label("NVIDIA H100 80GB HBM3") == "h100" and gpu_label("NVIDIA H200") == "h200"


def test_geotiff_read_cache_words_a_ratio_below_one_as_slower() -> None:
    from benchmarks.geotiff_read_cache import ratio_words

    assert ratio_words(2.0, 1.0, "faster", "slower") == "2.00x faster"
    assert ratio_words(0.65, 2.1, "faster", "slower") == "3.23x slower"


def _table_cells(line: str) -> int:
    """Cells of a Markdown table row as GitHub counts them: split at every pipe not escaped (a code span does not
    protect one), the outer pipes left out."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return len(re.split(r"(?<!\\)\|", s))


def test_committed_reports_tables_have_whole_separator_rows() -> None:
    """Every table in benchmarks/results has a separator row right under its header, with as many cells: GitHub
    renders a table whose separator has fewer or more as plain text."""
    sep = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
    bad = []
    for path in sorted((REPO / "benchmarks" / "results").glob("*.md")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.lstrip().startswith("|") or (i and lines[i - 1].lstrip().startswith("|")):
                continue  # not a table's first row
            under = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not sep.match(under) or _table_cells(under) != _table_cells(line):
                bad.append(f"{path.name}:{i + 1}: {_table_cells(line)} header cells, separator {under!r}")
    assert not bad, "\n".join(bad)
    assert _table_cells("| a | `b|c` | d \\| e |") == 4 and _table_cells("|---|---|") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusals of CUDA-only options on a machine without CUDA")
def test_benchmarks_refuse_cuda_options_without_cuda(capsys, tmp_path: Path) -> None:
    code, err = _refusal(capsys, "staging", ["--pin", "--out", str(tmp_path / "x.md")])
    assert code == 2 and "--pin needs page-locked memory" in err and "leave --pin out" in err, err
    code, err = _refusal(capsys, "seed_vs_ours", ["--device", "cuda:1", "--out", str(tmp_path / "x.md")])
    assert code != 0 and "--device: device 'cuda:1' asked for" in err and "sees no CUDA device" in err, err


def test_report_command_line_is_quoted_for_the_shell() -> None:
    """The recorded command reruns as it ran: an argument with spaces stays one argument."""
    from benchmarks._common import cpu_report_head

    argv = ["--note", "quiet machine; 2 cores", "--out", "/tmp/my results.md"]
    line = [ln for ln in cpu_report_head("t", "host.py", argv) if ln.startswith("- command:")][0]
    assert shlex.split(line.removeprefix("- command: ").strip("`")) == ["python", "benchmarks/host.py", *argv]


@pytest.mark.parametrize("module", ["conv_relu_cpu", "normalise_device", "spatial_epilogue", "staging"])
def test_benchmark_help_has_the_whole_first_paragraph(capsys, module: str) -> None:
    """--help describes the script in whole sentences (the docstring's first line stops mid-sentence)."""
    mod = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    first = " ".join(mod.__doc__.split("\n\n")[0].split())
    assert first.endswith(".") and first in " ".join(capsys.readouterr().out.split())


def test_scale_benchmark_concludes_from_its_measurements() -> None:
    """scale.py's closing sentence follows the measured walls (it once printed a fixed verdict)."""
    from benchmarks.scale import conclusion

    slower = conclusion(10.0, {1: 20.0, 2: 12.5}, 2)
    assert "(2 workers, 1 thread each) was slower than" in slower and "(0.80x its pixels/s)" in slower
    faster = conclusion(10.0, {2: 5.0}, 2)
    assert "was faster than" in faster and "(2.00x its pixels/s)" in faster
    assert conclusion(10.0, {}, 2) == "No local-worker rows were run."


def test_kernels_spatial_cases_honour_bf16_only() -> None:
    """--bf16-only leaves the float32 engine's spatial rows out."""
    from benchmarks.kernels import spatial_cases

    labels = [label for label, *_ in spatial_cases(torch.device("cpu"), 4, float32=False)]
    assert labels and not any("float32" in label for label in labels), labels


@pytest.mark.parametrize("form", ["paper", "seed"])
def test_kernels_benchmark_layer_rows_time_the_same_layer_both_ways(form):
    """benchmarks/kernels.py's per-layer rows: the seed's Conv3d and the eager conv2d compute the same layer,
    ReLU included (the Conv3d side alone applied it, so the per-layer ratios compared unlike work)."""
    from benchmarks.kernels import layer_cases
    from kernels.spectral import _random_program

    prog = _random_program(23, 24, 40, form=form, stage_norms=2 if form == "seed" else 0,
                           generator=torch.Generator().manual_seed(3))
    cases = layer_cases(prog, 37, torch.device("cpu"), torch.float32)
    assert [c[0].split(" ")[0] for c in cases] == ["stem", "block", "reduce"]
    for case in cases:
        a, b = case.seed(), case.eager()  # (P, C, D, 1, 1) and (1, C, D, P)
        torch.testing.assert_close(a[..., 0, 0].permute(1, 2, 0), b[0], rtol=1e-5, atol=1e-5, msg=case.name)
        assert case.in_bytes == case.conv2d_args[0].numel() * 4  # the input read once (float32)


def test_geotiff_read_cache_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """Both ways give the same map, which the report says (a cache setting must never change a class); the run
    puts back what it patched (the network and the runner's cache size), as it runs in this process."""
    import hsi_engine.runner as runner
    from hsi_engine.fused import FusedSSRN

    network, cache = FusedSSRN.__call__, runner.read_cache_bytes
    out = tmp_path / "cache.md"
    assert _run_main("geotiff_read_cache", ["--size", "64", "--bands", "12", "--reps", "1", "--out", str(out)]) == out
    assert (FusedSSRN.__call__, runner.read_cache_bytes) == (network, cache)
    text = out.read_text()
    assert "maps identical: True" in text and "| with room |" in text and "| without |" in text
    assert "median of 1 after an untimed warm-up of each" in text
    assert re.search(r"^with room / without: wall [0-9.]+x (faster|slower), CPU [0-9.]+x (less|more)$", text, re.M)
