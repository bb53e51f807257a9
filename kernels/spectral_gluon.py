"""The fused spectral stage in Gluon (Triton's explicit-layout dialect), for Hopper.

Why it exists. Compiled offline, the Triton kernel (:mod:`kernels.spectral`) spends a step of the band loop
staging its loop-carried activation windows through shared memory at every use: each tile crosses shared
memory 7 times, with a barrier per tap (``benchmarks/results/kernel-compile-sm90.md``). Plain Triton cannot
say "keep this tile in shared memory and let the tensor cores read it from there"; Gluon can. Here every
layer's activations live in a ring of shared-memory tiles, written once, and each tap's wgmma reads its slot
directly.

Layout. One program = one warpgroup (4 warps) = 64 pixels. Rings of ``RING`` (64, 32) tiles per residual
block for its input and its conv1 output, the conv weights (all taps) and the reduce weights of the current
position in shared memory. A step runs two phases; in each, every layer of the phase issues its wgmmas
asynchronously and they are waited on together:

- phase A: the stem (position j) and every block's conv2 (+ identity);
- phase B: every block's conv1 and the reduce.

How a step waits for its wgmmas (``waits``, :data:`WAITS`): ``phase`` waits once per phase (the session-5
kernel); ``layer`` waits for one layer's wgmmas at a time, in issue order, so a layer's epilogue (bias, ReLU,
identity, the store into the next ring) runs on the CUDA cores while the tensor cores work through the later
layers' wgmmas; ``stem_last`` also issues phase A's blocks last-first and the stem last, so the epilogue left
exposed is the stem's, the smallest. Every wgmma is complete when a step ends: a wgmma still in flight when
registers its accumulator shares are defined makes ptxas serialize all of them (C7515). Same numbers.
``identity="mma"`` (not yet timed on a GPU) adds each block's identity inside conv2's sum, one more wgmma per
block against an identity matrix in shared memory, so the conv2 epilogue loads nothing from the rings; it needs
blocks without a ReLU between conv2 and the add, as the SSRN's are.

A layer only reads tiles written in an earlier phase, so block b runs ``b * (KT)`` positions behind the
stem (one step more per block than the register kernel's wavefront) and the rings need ``KT + 1`` slots.
Positions outside ``[0, D)`` are written as zeros (the convs' zero padding), exactly as in the Triton kernel.

Two positions per step (``step="pair"``, :data:`STEPS`; 2.158 ms on an H200 against 2.321 for ``one``). A conv's wgmma
with N = 32 reads a 64 x 16 A tile and a 16 x 32 B tile from shared memory per 16 clocks of tensor-core work, 192 B
per clock where an SM serves 128: by that arithmetic the one-position kernel's convs cannot pass two thirds of the
tensor cores' rate. ``pair`` computes each conv's output pair (u, u + 1) in one (64, 64) accumulator: input
position u - KT // 2 + i meets the two stacked tap tiles [W_i; W_{i-1}] (zero past the taps), KT + 1 wgmmas of N =
64 (exactly at the 128 B per clock) where ``one`` issues 2 KT of N = 32: 14 % more multiply-adds, 42 % fewer HGMMA
instructions, half the steps, waits and barriers. The stacked tiles are K-major views of one buffer that holds each
conv's transposed taps last-first between zero tiles. Blocks run KT + 1 positions apart; with rings of exactly KT +
1 slots a layer overwrites the slots of the next block's identity in the same phase, so phase A runs the blocks'
conv2 epilogues last block first, the stem last, and each reads its identity just before (each warp reads its rows,
then writes them, in program order).

Two warpgroups (``step="ws"``, the default from session 19, when it ran on an H200: 1.516 ms against 2.321 for
``one``, same run). One warpgroup per SM issues every wgmma
and runs every epilogue, so whatever it does on the CUDA cores (bias, ReLU, identity, the stores into the rings,
barriers) the tensor cores wait for. ``ws`` splits the one-position step over two warpgroups
(``gl.warp_specialize``): A runs the stem and every block's conv2, B every block's conv1 and the reduce, each with
its own accumulators, handing steps over through mbarriers (two per direction, on alternate steps, so a phase
parity never aliases). B's step j needs A's step j (its block inputs); A's step j needs B's step j - 2 (its
conv1 outputs), not j - 1, so A's step j + 1 runs beside B's step j: blocks run KT + 1 positions apart (two more
steps in all) and the two steps that may overlap touch disjoint ring slots (the tests check every step). Same
shared memory as ``one`` plus a second ``last`` tile; 8 warps, B's registers capped by ``setmaxnreg``.

Persistent (``step="wsp"``, the default since session 22: 1.390 ms against 1.571 for ``ws``, same run). A ``ws``
program runs D + NB (KT + 1) steps for D band positions: each block of 64 pixels fills the pipeline and drains it
again (113 steps for 97 positions). ``wsp`` launches one program per SM; each runs its blocks (pid, pid + G, ...)
as one stream of band positions, D per block and KT // 2 zeros between blocks (the convs' padding on both sides),
so a block's fill runs under the last one's drain: D + KT // 2 steps per block after the first. Every layer masks
its output by the stream position's place in its block, and B writes a block's reduce when it has reduced that
block's last position. ``ws`` is the same kernel with one program per block.

Every form has a ``TRACE`` build (:func:`traced_run`, ``benchmarks/gluon_trace.py``) that stores the SM's cycle
counter at fixed points of every step (:data:`TRACE_POINTS`, :data:`TRACE_POINTS_WS`): where a step's time goes.

Scope: the paper's block form (no pre-activation or stage affines), bfloat16 / float16 inputs, fp32
accumulation, CUDA with a Hopper GPU (sm_90: wgmma). Measured on an H200 (Triton 3.6,
benchmarks/results/kernels-h200.md, session 22, run 12): 1.390 ms per 65,536 pixels of 200 bands in bf16 with
``wsp`` (the default), 1.571 ms with ``ws``, against 3.087 ms for the best Triton config and 12.364 ms for the Conv3d
formulation, same run (session 19: ``pair`` 2.158 ms, ``one`` 2.321 ms). The engine's ``triton`` backend runs it
where it applies (:mod:`kernels.dispatch`), after checking it once per program shape against the reference.
"""

from __future__ import annotations

import torch

from ssrn.errors import OptionError, OptionTypeError

from .program import SpectralProgram

GLUON_ERROR: str | None = None  # why the kernel is unavailable here (None: it is defined)
try:
    import triton.language as tl  # PropagateNan, which gluon's language does not re-export
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                                  warpgroup_mma_wait)

    _cta_barrier = getattr(gl, "barrier", None) or getattr(gl, "thread_barrier")  # renamed between releases
except (ImportError, AttributeError) as e:  # pragma: no cover - an older Triton, or none
    GLUON_ERROR = f"{type(e).__name__}: {e}"

BLOCK_P = 64  # one wgmma M: one warpgroup per program
# How a step waits for its wgmmas -> (SPLIT_WAIT, STEM_LAST): "phase", one wait per phase (the session-5 kernel);
# "layer", a wait per layer in issue order; "stem_last", a wait per layer with the stem issued last in phase A
# H200, Triton 3.6, 65,536 pixels of 200 bands, two runs (benchmarks/results/kernels-h200.md, runs 6 and 7):
# phase 2.496 / 2.487 ms, layer 2.302 / 2.299, stem_last 2.332 / 2.338
WAITS = {"phase": (False, False), "layer": (True, False), "stem_last": (True, True)}
DEFAULT_WAITS = "layer"
# Where a residual block's identity joins conv2: "epilogue" (loaded from its ring and added, the measured form) or
# "mma" (one more wgmma per block against an identity matrix; no epilogue load; not yet timed on a GPU)
IDENTITIES = ("epilogue", "mma")
DEFAULT_IDENTITY = "epilogue"
# Band positions per step: "one" (the measured kernel) or "pair" (every conv's output pair in one N = 2 x width
# accumulator: KT + 1 wgmmas where "one" issues 2 x KT narrower ones, half the steps, waits and barriers; waits per
# layer, identity in the epilogue) or "ws" (one position per step over two warpgroups, warp-specialized: stem and
# conv2s in one, conv1s and the reduce in the other, a step apart, so each one's epilogues run while the tensor
# cores take the other's wgmmas). H200, Triton 3.6, 65,536 pixels of 200 bands, one run (kernels-h200.md,
# session 19): one 2.321 ms, pair 2.158, ws 1.516. "wsp": ws with one program per SM, each running its blocks of
# pixels as one stream of band positions (a block's fill under the last one's drain): 1.390 ms against 1.571 for ws
# (session 22, run 12, same run; ws now computes each layer's stream position, 3.6 % slower than in session 19)
STEPS = ("one", "pair", "ws", "wsp")
WS_STEPS = ("ws", "wsp")  # the steps the two-warpgroup kernel runs
WS_WORKER_REGS = 232  # registers per thread of step="ws"'s second warpgroup (8 warps share the SM's 64 K)
DEFAULT_STEP = "wsp"
# TRACE (benchmarks/gluon_trace.py): SM-cycle timestamps a traced run writes per program and step, as the program's
# first thread (warp 0) passes them (the other warps' may differ by their skew), in this order;
# the step's end is the next step's "step start". One more row per program: cycles and global ns at its start
# (columns 0, 1) and end (2, 3), and the SM it ran on (4)
TRACE_POINTS = ("step start", "phase A issued", "phase A first wait", "phase A epilogues", "phase A barrier",
                "phase B issued", "phase B first wait", "phase B epilogues")
TRACE_WIDTH = 8  # len(TRACE_POINTS); the kernels write it as a literal
# step="ws" traces each warpgroup's step: A's four points in columns 0-3, B's in 4-7; its end, the next start
TRACE_POINTS_WS = (("A: step start", "A: B's step j - 2 done", "A: issued", "A: epilogues"),
                   ("B: step start", "B: A's step j done", "B: issued", "B: epilogues"))

if GLUON_ERROR is None:

    @gluon.jit
    def _relu(v):
        # NaN stays NaN, as in the reference (gl.maximum's default returns the other operand; see kernels.spectral)
        return gl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)

    @gluon.jit
    def _clock():
        # the SM's cycle counter: the trace's timestamps (TRACE only)
        return gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)

    @gluon.jit
    def _mark(trace_ptr, row, k: gl.constexpr, TRACE: gl.constexpr):
        # timestamp k of a step's trace row (see TRACE_POINTS)
        if TRACE:
            gl.store(trace_ptr + row * 8 + k, _clock())

    @gluon.jit
    def _trace_bounds(trace_ptr, row, k: gl.constexpr, TRACE: gl.constexpr):
        # the program's first (k = 0) or last (k = 2) timestamp in its extra row: SM cycles and the global
        # nanosecond timer (their ratio is the SM clock during the run), and at the start the SM it ran on
        if TRACE:
            gl.store(trace_ptr + row * 8 + k, _clock())
            gl.store(trace_ptr + row * 8 + k + 1, gl.inline_asm_elementwise(
                "mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1))
            if k == 0:
                gl.store(trace_ptr + row * 8 + 4, gl.inline_asm_elementwise(
                    "mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False, pack=1).to(gl.int64))

    @gluon.jit
    def _zeroed_tiles(dt: gl.constexpr, n: gl.constexpr, BP: gl.constexpr, WP: gl.constexpr, tile_s: gl.constexpr,
                      acc_l: gl.constexpr):
        # n (BP, WP) tiles in shared memory, zero: positions before the first are the convs' zero padding
        tiles = gl.allocate_shared_memory(dt, [n, BP, WP], tile_s)
        zero = gl.zeros([BP, WP], dt, acc_l)
        for i in gl.static_range(n):
            tiles.index(i).store(zero)
        return tiles

    @gluon.jit
    def _conv_and_stem_weights(conv_w_ptr, stem_w_ptr, dt: gl.constexpr, NW: gl.constexpr, KS_PAD: gl.constexpr,
                               WP: gl.constexpr, tile_s: gl.constexpr):
        # every conv's taps, (WP, WP) tiles tap by tap, and the stem's (KS_PAD, WP) taps into shared memory, once
        ld_w: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # (32, 32) tiles
        wr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_w))
        wc = gl.arange(0, WP, layout=gl.SliceLayout(0, ld_w))
        w_tile = gl.expand_dims(wr, 1) * WP + gl.expand_dims(wc, 0)
        w_smem = gl.allocate_shared_memory(dt, [NW, WP, WP], tile_s)
        for i in gl.static_range(NW):
            w_smem.index(i).store(gl.load(conv_w_ptr + i * WP * WP + w_tile))
        sr = gl.arange(0, KS_PAD, layout=gl.SliceLayout(1, ld_w))
        stem_smem = gl.allocate_shared_memory(dt, [KS_PAD, WP], tile_s,
                                              gl.load(stem_w_ptr + gl.expand_dims(sr, 1) * WP + gl.expand_dims(wc, 0)))
        return w_smem, stem_smem

    @gluon.jit
    def _bias_tile(b_ptr, offs_c, BP: gl.constexpr, WP: gl.constexpr, acc_l: gl.constexpr):
        return gl.zeros([BP, WP], gl.float32, acc_l) + gl.expand_dims(gl.load(b_ptr + offs_c), 0)

    @gluon.jit
    def _conv_issue(rings, w_smem, ring_base, newest, w_base, acc, KT: gl.constexpr, RING: gl.constexpr):
        # KT async wgmmas of one conv: tap t reads the ring slot of position newest - (KT - 1) + t; the first one
        # ignores acc's values (zero start; the bias is added after the wait)
        for t in gl.static_range(KT):
            slot = (newest - (KT - 1) + t) & (RING - 1)
            acc = warpgroup_mma(rings.index(ring_base + slot), w_smem.index(w_base + t), acc, use_acc=t > 0,
                                is_async=True)
        return acc

    @gluon.jit
    def _conv2_issue(rings, w_smem, eye_smem, zero_f, j, b: gl.constexpr, KT: gl.constexpr, RING: gl.constexpr,
                     BEHIND: gl.constexpr, ID_MMA: gl.constexpr):
        # block b's conv2 in phase A: its taps over the newest conv1 outputs (written last step); with ID_MMA the
        # block's identity (its input at output position q) joins the sum as one more wgmma against an identity
        # matrix, instead of an epilogue load and add
        acc = _conv_issue(rings, w_smem, (2 * b + 1) * RING, j - 1 - b * BEHIND - KT // 2, (2 * b + 1) * KT, zero_f,
                          KT, RING)
        if ID_MMA:
            q = j - (b + 1) * BEHIND
            acc = warpgroup_mma(rings.index(2 * b * RING + (q & (RING - 1))), eye_smem, acc, is_async=True)
        return acc

    @gluon.jit
    def _stem_out(s, rings, j, D, STEM_RELU: gl.constexpr, RING: gl.constexpr, dt: gl.constexpr, bias=None):
        # the stem's epilogue: position j of block 0's input ring (zero outside [0, D): the convs' padding)
        if bias is not None:
            s = s + bias
        if STEM_RELU:
            s = _relu(s)
        s = gl.where((j >= 0) & (j < D), s, 0.0)
        rings.index(j & (RING - 1)).store(s.to(dt))

    @gluon.jit
    def _residual_out(y, ident, dst, q, D, bias, RELU2: gl.constexpr, BLOCK_RELU: gl.constexpr, dt: gl.constexpr):
        # a block's conv2 epilogue at one position q: bias, ReLU, identity (None: already in y), ReLU -> dst, zero
        # outside [0, D) (the next block's input ring, or `last`, the reduce's operand)
        y = y + bias
        if RELU2:
            y = _relu(y)
        if ident is not None:
            y = y + ident.to(gl.float32)
        if BLOCK_RELU:
            y = _relu(y)
        dst.store(gl.where((q >= 0) & (q < D), y, 0.0).to(dt))

    @gluon.jit
    def _block_out(acc, rings, last, conv_b_ptr, offs_c, j, D, b: gl.constexpr, NUM_BLOCKS: gl.constexpr,
                   BEHIND: gl.constexpr, RING: gl.constexpr, WP: gl.constexpr, RELU2_MASK: gl.constexpr,
                   BLOCK_RELU_MASK: gl.constexpr, acc_l: gl.constexpr, dt: gl.constexpr, ID_MMA: gl.constexpr,
                   S=None, nblk=None):
        # block b's conv2 epilogue (one position per step) at its output position q (with S: a stream position,
        # zero where _ws_position says so)
        q = j - (b + 1) * BEHIND
        ident = None if ID_MMA else rings.index(2 * b * RING + (q & (RING - 1))).load(acc_l)
        dst = rings.index(2 * (b + 1) * RING + (q & (RING - 1))) if b + 1 < NUM_BLOCKS else last
        _residual_out(acc, ident, dst, q if S is None else _ws_position(q, S, D, nblk), D,
                      gl.expand_dims(gl.load(conv_b_ptr + (2 * b + 1) * WP + offs_c), 0),
                      (RELU2_MASK >> b) & 1, (BLOCK_RELU_MASK >> b) & 1, dt)

    @gluon.jit
    def _reduce_out(acc_r, out_ptr, red_b_ptr, pid, P, F, stride_op, stride_of, BP: gl.constexpr, FP: gl.constexpr,
                    REDUCE_RELU: gl.constexpr, accr_l: gl.constexpr, dt: gl.constexpr):
        # the reduce's epilogue, once at the end: bias, ReLU, the program's pixels and features to out
        op = pid * BP + gl.arange(0, BP, layout=gl.SliceLayout(1, accr_l))
        of = gl.arange(0, FP, layout=gl.SliceLayout(0, accr_l))
        out = acc_r + gl.expand_dims(gl.load(red_b_ptr + of), 0)
        if REDUCE_RELU:
            out = _relu(out)
        gl.store(out_ptr + gl.expand_dims(op.to(gl.int64), 1) * stride_op + gl.expand_dims(of, 0) * stride_of,
                 out.to(dt), mask=gl.expand_dims(op < P, 1) & gl.expand_dims(of < F, 0))

    @gluon.jit
    def _gluon_stage_kernel(
        x_ptr, out_ptr, stem_w_ptr, stem_b_ptr, conv_w_ptr, conv_b_ptr, red_w_ptr, red_b_ptr, trace_ptr,
        P, B, D, F, stride_xp, stride_xb, stride_op, stride_of,
        STEM_STRIDE: gl.constexpr, KS: gl.constexpr, KS_PAD: gl.constexpr, KT: gl.constexpr,
        NUM_BLOCKS: gl.constexpr, WP: gl.constexpr, FP: gl.constexpr, STEM_RELU: gl.constexpr,
        RELU1_MASK: gl.constexpr, RELU2_MASK: gl.constexpr, BLOCK_RELU_MASK: gl.constexpr,
        REDUCE_RELU: gl.constexpr, RING: gl.constexpr, BP: gl.constexpr, SW_W: gl.constexpr, SW_X: gl.constexpr,
        SW_R: gl.constexpr, SPLIT_WAIT: gl.constexpr, STEM_LAST: gl.constexpr, ID_MMA: gl.constexpr,
        TRACE: gl.constexpr,
    ):
        dt: gl.constexpr = x_ptr.dtype.element_ty
        HALF: gl.constexpr = KT // 2
        BEHIND: gl.constexpr = KT  # positions each block runs behind the one before it (KT - 1 taps back, + 1 step)
        KA: gl.constexpr = KT + 1 if ID_MMA else KT  # wgmma groups of one block's conv2 (+ its identity)
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WP, 16])
        accr_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, FP, 16])
        # swizzle = the row's bytes, at most 128 (a wider swizzle than the row does not compile)
        tile_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_W, element_bitwidth=16, rank=2)
        stem_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_X, element_bitwidth=16, rank=2)
        red_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_R, element_bitwidth=16, rank=2)
        ld_w: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # (32, 32) tiles
        ld_r: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])  # (32, 128) tiles
        ld_x: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # (64, 16) tiles

        pid = gl.program_id(0)
        w_smem, stem_smem = _conv_and_stem_weights(conv_w_ptr, stem_w_ptr, dt, 2 * NUM_BLOCKS * KT, KS_PAD, WP, tile_s)
        if ID_MMA:  # a (WP, WP) identity matrix, the B operand of each block's identity wgmma (1 x bf16 is exact)
            wr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_w))
            wc = gl.arange(0, WP, layout=gl.SliceLayout(0, ld_w))
            eye_smem = gl.allocate_shared_memory(dt, [WP, WP], tile_s)
            eye_smem.store(gl.where(gl.expand_dims(wr, 1) == gl.expand_dims(wc, 0), 1.0, 0.0).to(dt))
        else:
            eye_smem = stem_smem  # not read
        rr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_r))
        rc = gl.arange(0, FP, layout=gl.SliceLayout(0, ld_r))
        r_tile = gl.expand_dims(rr, 1) * FP + gl.expand_dims(rc, 0)
        red_smem = gl.allocate_shared_memory(dt, [WP, FP], red_s)

        # --- activation rings (zero: positions before the first are the convs' zero padding) ----------------
        rings = _zeroed_tiles(dt, 2 * NUM_BLOCKS * RING, BP, WP, tile_s, acc_l)  # (block input, conv1 out)
        last = gl.allocate_shared_memory(dt, [BP, WP], tile_s)  # the last block's newest output
        last.store(gl.zeros([BP, WP], dt, acc_l))

        # --- the stem's input for step 0 -------------------------------------------------------------------
        xp = pid * BP + gl.arange(0, BP, layout=gl.SliceLayout(1, ld_x))
        xk = gl.arange(0, KS_PAD, layout=gl.SliceLayout(0, ld_x))
        x_rows = x_ptr + gl.expand_dims(xp.to(gl.int64), 1) * stride_xp
        x_mask = gl.expand_dims(xp < P, 1) & gl.expand_dims(xk < KS, 0)
        xs_smem = gl.allocate_shared_memory(dt, [BP, KS_PAD], stem_s)
        cols = xk
        xs_smem.store(gl.load(x_rows + gl.expand_dims(cols, 0) * stride_xb,
                              mask=x_mask & gl.expand_dims(cols < B, 0), other=0.0).to(dt))
        fence_async_shared()
        _cta_barrier()

        offs_c = gl.arange(0, WP, layout=gl.SliceLayout(0, acc_l))
        zero_f = gl.zeros([BP, WP], gl.float32, acc_l)
        acc_r = gl.zeros([BP, FP], gl.float32, accr_l)
        n_steps = D + NUM_BLOCKS * BEHIND
        trow = pid.to(gl.int64) * (n_steps + 1)  # TRACE: the program's rows, one per step and one more
        _trace_bounds(trace_ptr, trow + n_steps, 0, TRACE)
        for j in range(0, n_steps):
            _mark(trace_ptr, trow + j, 0, TRACE)
            y_last = j - NUM_BLOCKS * BEHIND  # the position the last block writes in this step's phase A
            red = gl.load(red_w_ptr + gl.minimum(gl.maximum(y_last, 0), D - 1) * WP * FP + r_tile)

            # phase A: stem -> position j; conv2 of every block -> its output position (+ identity)
            if STEM_LAST:  # blocks last-first, the stem last: the epilogue left without wgmmas to hide it is the
                # stem's, the smallest (with SPLIT_WAIT only)
                accs = ()
                for i in gl.static_range(NUM_BLOCKS):
                    accs = accs + (_conv2_issue(rings, w_smem, eye_smem, zero_f, j, NUM_BLOCKS - 1 - i, KT, RING,
                                                BEHIND, ID_MMA),)
                # a zero start, the bias added after the wait: registers defined while wgmmas are in flight
                # make ptxas inject a wait before this one (C7517)
                accs = accs + (warpgroup_mma(xs_smem, stem_smem, zero_f, use_acc=False, is_async=True),)
                _mark(trace_ptr, trow + j, 1, TRACE)
                red_smem.store(red)  # its only reader, the last reduce, completed in phase B
                for i in gl.static_range(NUM_BLOCKS):
                    accs = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - i) * KA + 1, deps=accs)
                    if i == 0:
                        _mark(trace_ptr, trow + j, 2, TRACE)
                    _block_out(accs[i], rings, last, conv_b_ptr, offs_c, j, D, NUM_BLOCKS - 1 - i, NUM_BLOCKS,
                               BEHIND, RING, WP, RELU2_MASK, BLOCK_RELU_MASK, acc_l, dt, ID_MMA)
                accs = warpgroup_mma_wait(num_outstanding=0, deps=accs)
                _stem_out(accs[NUM_BLOCKS], rings, j, D, STEM_RELU, RING, dt,
                          gl.expand_dims(gl.load(stem_b_ptr + offs_c), 0))
            else:
                accs = (warpgroup_mma(xs_smem, stem_smem, _bias_tile(stem_b_ptr, offs_c, BP, WP, acc_l),
                                      is_async=True),)
                for b in gl.static_range(NUM_BLOCKS):
                    accs = accs + (_conv2_issue(rings, w_smem, eye_smem, zero_f, j, b, KT, RING, BEHIND, ID_MMA),)
                _mark(trace_ptr, trow + j, 1, TRACE)
                # SPLIT_WAIT: wait for one layer's wgmmas at a time (they complete in issue order), so a layer's
                # epilogue runs on the CUDA cores while the tensor cores work through the later layers' wgmmas
                accs = warpgroup_mma_wait(num_outstanding=NUM_BLOCKS * KA if SPLIT_WAIT else 0, deps=accs)
                _mark(trace_ptr, trow + j, 2, TRACE)
                _stem_out(accs[0], rings, j, D, STEM_RELU, RING, dt)
                if SPLIT_WAIT:  # its only reader, the last reduce, completed in phase B: store while conv2s run
                    red_smem.store(red)
                for b in gl.static_range(NUM_BLOCKS):
                    if SPLIT_WAIT:
                        accs = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - b) * KA, deps=accs)
                    _block_out(accs[b + 1], rings, last, conv_b_ptr, offs_c, j, D, b, NUM_BLOCKS, BEHIND, RING,
                               WP, RELU2_MASK, BLOCK_RELU_MASK, acc_l, dt, ID_MMA)
                if not SPLIT_WAIT:
                    red_smem.store(red)
            _mark(trace_ptr, trow + j, 3, TRACE)
            fence_async_shared()
            _cta_barrier()
            _mark(trace_ptr, trow + j, 4, TRACE)

            # phase B: conv1 of every block; the reduce of the last block's output; the next stem input
            cols = (j + 1) * STEM_STRIDE + xk
            xs_next = gl.load(x_rows + gl.expand_dims(cols, 0) * stride_xb,
                              mask=x_mask & gl.expand_dims(cols < B, 0), other=0.0)
            accs = ()
            for b in gl.static_range(NUM_BLOCKS):
                y_new = j - b * BEHIND  # newest input of block b, written in phase A
                accs = accs + (_conv_issue(rings, w_smem, 2 * b * RING, y_new, 2 * b * KT, zero_f, KT, RING),)
            acc_r = warpgroup_mma(last, red_smem, acc_r, is_async=True)
            _mark(trace_ptr, trow + j, 5, TRACE)
            if SPLIT_WAIT:  # the stem's wgmma, its only reader, completed in phase A
                xs_smem.store(xs_next.to(dt))
            # SPLIT_WAIT: block b's conv1 is done while the later blocks' and the reduce's wgmmas still run. The
            # reduce is waited for before the step ends: a wgmma still in flight at the next stem's issue (whose
            # accumulator the bias defines) made ptxas serialize every wgmma of the kernel (C7515)
            waited = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1) * KT + 1 if SPLIT_WAIT else 0,
                                        deps=accs + (acc_r,))
            _mark(trace_ptr, trow + j, 6, TRACE)
            for b in gl.static_range(NUM_BLOCKS):
                u = j - b * BEHIND - HALF
                if SPLIT_WAIT and b > 0:
                    waited = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - b) * KT + 1, deps=waited)
                acc = waited[b] + gl.expand_dims(gl.load(conv_b_ptr + (2 * b) * WP + offs_c), 0)
                if (RELU1_MASK >> b) & 1:
                    acc = _relu(acc)
                rings.index((2 * b + 1) * RING + (u & (RING - 1))).store(
                    gl.where((u >= 0) & (u < D), acc, 0.0).to(dt))
            if SPLIT_WAIT:
                waited = warpgroup_mma_wait(num_outstanding=0, deps=waited)
            acc_r = waited[NUM_BLOCKS]
            if not SPLIT_WAIT:
                xs_smem.store(xs_next.to(dt))
            _mark(trace_ptr, trow + j, 7, TRACE)
            fence_async_shared()
            _cta_barrier()

        _trace_bounds(trace_ptr, trow + n_steps, 2, TRACE)
        _reduce_out(acc_r, out_ptr, red_b_ptr, pid, P, F, stride_op, stride_of, BP, FP, REDUCE_RELU, accr_l, dt)

    @gluon.jit
    def _pair_taps(rings, wbuf, ring_base, first, conv: gl.constexpr, acc, KT: gl.constexpr, RING: gl.constexpr,
                   WP: gl.constexpr, tile_s: gl.constexpr, PUBLIC_REINTERPRET: gl.constexpr):
        # a conv's output pair (u, u + 1): its KT + 1 input positions first = u - KT // 2 .. u + KT // 2 + 1, each
        # against two stacked tap tiles [W_i; W_{i-1}] (rows: out(u), then out(u + 1); the zero tiles past the
        # taps), K-major: KT + 1 wgmmas of N = 2 WP where the one-position kernel issues 2 KT of N = WP
        for i in gl.static_range(KT + 1):
            if PUBLIC_REINTERPRET:  # Triton >= 3.7: the two tiles as one view (3.6 refuses the odd offset)
                two = wbuf.slice(conv * (KT + 1) + KT - i, 2).reinterpret(shape=[2 * WP, WP], layout=tile_s)
            else:  # Triton 3.6: W_i's tile, read on into the next one (3.7+ refuses a view past its source)
                two = wbuf.index(conv * (KT + 1) + KT - i)._reinterpret(wbuf.dtype, [2 * WP, WP], tile_s)
            acc = warpgroup_mma(rings.index(ring_base + ((first + i) & (RING - 1))), two.permute((1, 0)), acc,
                                use_acc=i > 0, is_async=True)
        return acc

    @gluon.jit
    def _halves(acc, BP: gl.constexpr, WP: gl.constexpr, acc_l: gl.constexpr):
        # a pair accumulator (BP, 2 WP) -> its two positions (BP, WP) in the one-position layout (the same
        # registers: no data moves)
        lo, hi = gl.split(gl.permute(gl.reshape(acc, [BP, 2, WP]), [0, 2, 1]))
        return gl.convert_layout(lo, acc_l), gl.convert_layout(hi, acc_l)

    @gluon.jit
    def _pair_conv2_out(acc, rings, last, conv_b_ptr, offs_c, j, D, b: gl.constexpr, NUM_BLOCKS: gl.constexpr,
                        LAG: gl.constexpr, RING: gl.constexpr, BP: gl.constexpr, WP: gl.constexpr,
                        RELU2_MASK: gl.constexpr, BLOCK_RELU_MASK: gl.constexpr, acc_l: gl.constexpr,
                        dt: gl.constexpr):
        # block b's conv2 epilogue for its pair (q, q + 1) -> X_{b+1} (or `last`). Its identity X_b (q, q + 1) is
        # read here, ahead of the layer before it, which writes X_b (q + LAG, + 1) into the same slots when
        # RING = LAG (each warp reads its rows, then writes them, in program order)
        q = j - (b + 1) * LAG
        i0 = rings.index(2 * b * RING + (q & (RING - 1))).load(acc_l)
        i1 = rings.index(2 * b * RING + ((q + 1) & (RING - 1))).load(acc_l)
        y0, y1 = _halves(acc, BP, WP, acc_l)
        bias = gl.expand_dims(gl.load(conv_b_ptr + (2 * b + 1) * WP + offs_c), 0)
        relu2: gl.constexpr = (RELU2_MASK >> b) & 1
        brelu: gl.constexpr = (BLOCK_RELU_MASK >> b) & 1
        if b + 1 < NUM_BLOCKS:
            nxt: gl.constexpr = 2 * (b + 1) * RING
            _residual_out(y0, i0, rings.index(nxt + (q & (RING - 1))), q, D, bias, relu2, brelu, dt)
            _residual_out(y1, i1, rings.index(nxt + ((q + 1) & (RING - 1))), q + 1, D, bias, relu2, brelu, dt)
        else:
            _residual_out(y0, i0, last.index(0), q, D, bias, relu2, brelu, dt)
            _residual_out(y1, i1, last.index(1), q + 1, D, bias, relu2, brelu, dt)

    @gluon.jit
    def _gluon_pair_kernel(
        x_ptr, out_ptr, stem_w_ptr, stem_b_ptr, conv_w_ptr, conv_b_ptr, red_w_ptr, red_b_ptr, trace_ptr,
        P, B, D, F, stride_xp, stride_xb, stride_op, stride_of,
        STEM_STRIDE: gl.constexpr, KS2: gl.constexpr, KS2_PAD: gl.constexpr, KT: gl.constexpr, NUM_BLOCKS: gl.constexpr,
        WP: gl.constexpr, FP: gl.constexpr, STEM_RELU: gl.constexpr, RELU1_MASK: gl.constexpr,
        RELU2_MASK: gl.constexpr, BLOCK_RELU_MASK: gl.constexpr, REDUCE_RELU: gl.constexpr, RING: gl.constexpr,
        BP: gl.constexpr, SW_W: gl.constexpr, SW_X: gl.constexpr, SW_S: gl.constexpr, SW_R: gl.constexpr,
        PUBLIC_REINTERPRET: gl.constexpr, TRACE: gl.constexpr,
    ):
        """Two band positions of every layer per step (``step="pair"``): each conv's output pair in one (BP, 2 WP)
        accumulator. Inputs: ``stem_w_ptr`` (KS2_PAD, 2 WP), the stem's taps for both positions of a pair;
        ``conv_w_ptr`` (2 NB (KT + 1) + 1, WP, WP), each conv's transposed taps last-first between zero tiles."""
        dt: gl.constexpr = x_ptr.dtype.element_ty
        HALF: gl.constexpr = KT // 2
        LAG: gl.constexpr = KT + 1  # positions each block runs behind the one before it
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WP, 16])
        acc2_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, 2 * WP, 16])
        accr_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, FP, 16])
        tile_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_W, element_bitwidth=16, rank=2)
        stem_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_S, element_bitwidth=16, rank=2)
        xs_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_X, element_bitwidth=16, rank=2)
        red_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_R, element_bitwidth=16, rank=2)
        ld_w: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # (32, 32) tiles
        ld_s: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # (16, 64)
        ld_r: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])  # (32, 128)
        ld_x: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # (64, 16)

        pid = gl.program_id(0)
        # --- weights into shared memory, once --------------------------------------------------------------
        wr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_w))
        wc = gl.arange(0, WP, layout=gl.SliceLayout(0, ld_w))
        w_tile = gl.expand_dims(wr, 1) * WP + gl.expand_dims(wc, 0)
        NWB: gl.constexpr = 2 * NUM_BLOCKS * (KT + 1) + 1
        wbuf = gl.allocate_shared_memory(dt, [NWB, WP, WP], tile_s)
        for i in gl.static_range(NWB):
            wbuf.index(i).store(gl.load(conv_w_ptr + i * WP * WP + w_tile))
        sr = gl.arange(0, KS2_PAD, layout=gl.SliceLayout(1, ld_s))
        sc = gl.arange(0, 2 * WP, layout=gl.SliceLayout(0, ld_s))
        stem_smem = gl.allocate_shared_memory(dt, [KS2_PAD, 2 * WP], stem_s, gl.load(
            stem_w_ptr + gl.expand_dims(sr, 1) * (2 * WP) + gl.expand_dims(sc, 0)))
        rr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_r))
        rc = gl.arange(0, FP, layout=gl.SliceLayout(0, ld_r))
        r_tile = gl.expand_dims(rr, 1) * FP + gl.expand_dims(rc, 0)
        red_smem = gl.allocate_shared_memory(dt, [2, WP, FP], red_s)  # the reduce's weights of a pair

        # --- activation rings (block inputs, then conv1 outputs) and the last block's newest pair ------------
        rings = _zeroed_tiles(dt, 2 * NUM_BLOCKS * RING, BP, WP, tile_s, acc_l)
        last = _zeroed_tiles(dt, 2, BP, WP, tile_s, acc_l)

        # --- the stem's input for step 0: bands 0 .. KS + STEM_STRIDE - 1 of both positions ------------------
        xp = pid * BP + gl.arange(0, BP, layout=gl.SliceLayout(1, ld_x))
        xk = gl.arange(0, KS2_PAD, layout=gl.SliceLayout(0, ld_x))
        x_rows = x_ptr + gl.expand_dims(xp.to(gl.int64), 1) * stride_xp
        x_mask = gl.expand_dims(xp < P, 1) & gl.expand_dims(xk < KS2, 0)
        xs_smem = gl.allocate_shared_memory(dt, [BP, KS2_PAD], xs_l)
        xs_smem.store(gl.load(x_rows + gl.expand_dims(xk, 0) * stride_xb, mask=x_mask & gl.expand_dims(xk < B, 0),
                              other=0.0).to(dt))
        fence_async_shared()
        _cta_barrier()

        offs_c = gl.arange(0, WP, layout=gl.SliceLayout(0, acc_l))
        zero2 = gl.zeros([BP, 2 * WP], gl.float32, acc2_l)
        acc_r = gl.zeros([BP, FP], gl.float32, accr_l)
        n_steps = (D + 1) // 2 + NUM_BLOCKS * LAG // 2
        trow = pid.to(gl.int64) * (n_steps + 1)  # TRACE: the program's rows, one per step and one more
        _trace_bounds(trace_ptr, trow + n_steps, 0, TRACE)
        for s in range(0, n_steps):
            _mark(trace_ptr, trow + s, 0, TRACE)
            j = 2 * s  # the stem's pair (j, j + 1)
            y_last = j - NUM_BLOCKS * LAG  # the last block's pair, written in phase A, reduced in phase B

            # phase A: block b's conv2 -> X_{b+1} (q, q + 1), q = j - (b + 1) LAG, last block first; the stem ->
            # X_0 (j, j + 1) last. With RING = LAG a layer writes the slots of the next layer's identity: each block
            # reads its identity just before its epilogue, ahead of the layer before it (each warp reads its rows,
            # then writes them, in program order), so no identity is held in registers across a wait
            accs = ()
            for i in gl.static_range(NUM_BLOCKS):
                accs = accs + (_pair_taps(rings, wbuf, (2 * (NUM_BLOCKS - 1 - i) + 1) * RING,
                                          j - (NUM_BLOCKS - i) * LAG - HALF, 2 * (NUM_BLOCKS - 1 - i) + 1, zero2, KT,
                                          RING, WP, tile_s, PUBLIC_REINTERPRET),)
            accs = accs + (warpgroup_mma(xs_smem, stem_smem, zero2, use_acc=False, is_async=True),)
            _mark(trace_ptr, trow + s, 1, TRACE)
            red_smem.index(0).store(gl.load(red_w_ptr + gl.minimum(gl.maximum(y_last, 0), D - 1) * WP * FP + r_tile))
            red_smem.index(1).store(gl.load(red_w_ptr + gl.minimum(gl.maximum(y_last + 1, 0), D - 1) * WP * FP
                                            + r_tile))  # their only reader, the last reduce, completed in phase B
            for i in gl.static_range(NUM_BLOCKS):
                accs = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - i) * (KT + 1) + 1, deps=accs)
                if i == 0:
                    _mark(trace_ptr, trow + s, 2, TRACE)
                _pair_conv2_out(accs[i], rings, last, conv_b_ptr, offs_c, j, D, NUM_BLOCKS - 1 - i, NUM_BLOCKS, LAG,
                                RING, BP, WP, RELU2_MASK, BLOCK_RELU_MASK, acc_l, dt)
            accs = warpgroup_mma_wait(num_outstanding=0, deps=accs)
            s0, s1 = _halves(accs[NUM_BLOCKS], BP, WP, acc_l)
            stem_b = gl.expand_dims(gl.load(stem_b_ptr + offs_c), 0)
            _stem_out(s0, rings, j, D, STEM_RELU, RING, dt, stem_b)
            _stem_out(s1, rings, j + 1, D, STEM_RELU, RING, dt, stem_b)
            _mark(trace_ptr, trow + s, 3, TRACE)
            fence_async_shared()
            _cta_barrier()
            _mark(trace_ptr, trow + s, 4, TRACE)

            # phase B: block b's conv1 -> H_b (u, u + 1), u = j - HALF - b LAG; the reduce of the last block's pair;
            # the next stem input
            cols = (j + 2) * STEM_STRIDE + xk
            xs_next = gl.load(x_rows + gl.expand_dims(cols, 0) * stride_xb, mask=x_mask & gl.expand_dims(cols < B, 0),
                              other=0.0)
            accs = ()
            for b in gl.static_range(NUM_BLOCKS):
                u = j - HALF - b * LAG
                accs = accs + (_pair_taps(rings, wbuf, 2 * b * RING, u - HALF, 2 * b, zero2, KT, RING, WP, tile_s,
                                          PUBLIC_REINTERPRET),)
            acc_r = warpgroup_mma(last.index(0), red_smem.index(0), acc_r, is_async=True)
            acc_r = warpgroup_mma(last.index(1), red_smem.index(1), acc_r, is_async=True)
            _mark(trace_ptr, trow + s, 5, TRACE)
            xs_smem.store(xs_next.to(dt))  # its only reader, the stem's wgmma, completed in phase A
            waited = accs + (acc_r,)
            for b in gl.static_range(NUM_BLOCKS):
                waited = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - b) * (KT + 1) + 2, deps=waited)
                if b == 0:
                    _mark(trace_ptr, trow + s, 6, TRACE)
                u = j - HALF - b * LAG
                h0, h1 = _halves(waited[b], BP, WP, acc_l)
                bias = gl.expand_dims(gl.load(conv_b_ptr + (2 * b) * WP + offs_c), 0)
                h0 = h0 + bias
                h1 = h1 + bias
                if (RELU1_MASK >> b) & 1:
                    h0 = _relu(h0)
                    h1 = _relu(h1)
                base = (2 * b + 1) * RING
                rings.index(base + (u & (RING - 1))).store(gl.where((u >= 0) & (u < D), h0, 0.0).to(dt))
                rings.index(base + ((u + 1) & (RING - 1))).store(gl.where((u + 1 >= 0) & (u + 1 < D), h1, 0.0).to(dt))
            waited = warpgroup_mma_wait(num_outstanding=0, deps=waited)
            acc_r = waited[NUM_BLOCKS]
            _mark(trace_ptr, trow + s, 7, TRACE)
            fence_async_shared()
            _cta_barrier()

        _trace_bounds(trace_ptr, trow + n_steps, 2, TRACE)
        _reduce_out(acc_r, out_ptr, red_b_ptr, pid, P, F, stride_op, stride_of, BP, FP, REDUCE_RELU, accr_l, dt)

    @gluon.jit
    def _ws_position(g, S, D, nblk):
        # stream position g -> its block's band position (S per block, D of them real, the rest zeros); -1 before
        # the stream or past the program's last block: where this is outside [0, D) a layer's output is zero
        k = gl.maximum(g, 0) // S
        return ((g >= 0) & (k < nblk)).to(gl.int32) * (g - k * S + 1) - 1

    @gluon.jit
    def _ws_stem_and_conv2s(rings, w_smem, stem_smem, xs_smem, lasts, done_a, done_b, x_ptr, stem_b_ptr, conv_b_ptr,
                            trace_ptr, pid, P, B, D, G, NPB, stride_xp, stride_xb, STEM_STRIDE: gl.constexpr,
                            KS: gl.constexpr,
                            KS_PAD: gl.constexpr, KT: gl.constexpr, NUM_BLOCKS: gl.constexpr, WP: gl.constexpr,
                            STEM_RELU: gl.constexpr, RELU2_MASK: gl.constexpr, BLOCK_RELU_MASK: gl.constexpr,
                            RING: gl.constexpr, BP: gl.constexpr, TRACE: gl.constexpr):
        # step="ws", warpgroup A (the default partition): at step j, every block's conv2 (last block first) over
        # the conv1 outputs of step j - 2 and earlier, with its identity, then the stem -> stream position j
        dt: gl.constexpr = rings.dtype
        HALF: gl.constexpr = KT // 2
        LAG: gl.constexpr = KT + 1
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WP, 16])
        ld_x: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
        xr = gl.arange(0, BP, layout=gl.SliceLayout(1, ld_x))
        xk = gl.arange(0, KS_PAD, layout=gl.SliceLayout(0, ld_x))
        offs_c = gl.arange(0, WP, layout=gl.SliceLayout(0, acc_l))
        zero_f = gl.zeros([BP, WP], gl.float32, acc_l)
        nblk = (NPB - pid + G - 1) // G  # this program's blocks of BP pixels: pid, pid + G, ...
        S = D + HALF  # a block's stream positions: D, then HALF zeros (the convs' padding on both sides)
        n_steps = (nblk - 1) * S + D + NUM_BLOCKS * LAG
        trow = pid.to(gl.int64) * (n_steps + 1)  # TRACE: A's timestamps in columns 0-3 (TRACE_POINTS_WS)
        _trace_bounds(trace_ptr, trow + n_steps, 0, TRACE)
        for j in range(0, n_steps):
            _mark(trace_ptr, trow + j, 0, TRACE)
            k_x = (j + 1) // S  # the next step's stem input (block k_x, position p_x), in flight while this step runs
            p_x = j + 1 - k_x * S
            xp = (pid + k_x * G) * BP + xr
            cols = p_x * STEM_STRIDE + xk
            xs_next = gl.load(x_ptr + gl.expand_dims(xp.to(gl.int64), 1) * stride_xp
                              + gl.expand_dims(cols, 0) * stride_xb,
                              mask=gl.expand_dims((xp < P) & (k_x < nblk), 1) & gl.expand_dims((xk < KS) & (cols < B), 0),
                              other=0.0)
            # warpgroup B's step j - 2 is done: the conv1 outputs read here are written, and nothing written here
            # is still read by it (its step j - 1 may run alongside: neither touches what the other writes)
            mbarrier.wait(done_b.index(j & 1), ((j - 2) >> 1) & 1)
            _mark(trace_ptr, trow + j, 1, TRACE)
            accs = ()
            for i in gl.static_range(NUM_BLOCKS):  # block NUM_BLOCKS - 1 - i
                accs = accs + (_conv_issue(rings, w_smem, (2 * (NUM_BLOCKS - 1 - i) + 1) * RING,
                                           j - 2 - (NUM_BLOCKS - 1 - i) * LAG - HALF,
                                           (2 * (NUM_BLOCKS - 1 - i) + 1) * KT, zero_f, KT, RING),)
            accs = accs + (warpgroup_mma(xs_smem, stem_smem, zero_f, use_acc=False, is_async=True),)
            _mark(trace_ptr, trow + j, 2, TRACE)
            for i in gl.static_range(NUM_BLOCKS):  # with RING = LAG a block's output overwrites the identity
                # slot of the block after it: the last block's epilogue runs first, the stem's last
                accs = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - i) * KT + 1, deps=accs)
                _block_out(accs[i], rings, lasts.index(j & 1), conv_b_ptr, offs_c, j, D, NUM_BLOCKS - 1 - i,
                           NUM_BLOCKS, LAG, RING, WP, RELU2_MASK, BLOCK_RELU_MASK, acc_l, dt, False, S, nblk)
            accs = warpgroup_mma_wait(num_outstanding=0, deps=accs)
            s = accs[NUM_BLOCKS] + gl.expand_dims(gl.load(stem_b_ptr + offs_c), 0)
            if STEM_RELU:
                s = _relu(s)
            p_s = _ws_position(j, S, D, nblk)
            rings.index(j & (RING - 1)).store(gl.where((p_s >= 0) & (p_s < D), s, 0.0).to(dt))
            xs_smem.store(xs_next.to(dt))  # its reader, this step's stem wgmma, completed above
            _mark(trace_ptr, trow + j, 3, TRACE)
            fence_async_shared()
            _cta_barrier()
            mbarrier.arrive(done_a.index(j & 1), count=1)
        _trace_bounds(trace_ptr, trow + n_steps, 2, TRACE)

    @gluon.jit
    def _ws_conv1s_and_reduce(rings, w_smem, red_smem, lasts, done_a, done_b, out_ptr, conv_b_ptr, red_w_ptr,
                              red_b_ptr, trace_ptr, pid, P, D, F, G, NPB, stride_op, stride_of, KT: gl.constexpr,
                              NUM_BLOCKS: gl.constexpr, WP: gl.constexpr, FP: gl.constexpr,
                              RELU1_MASK: gl.constexpr, REDUCE_RELU: gl.constexpr, RING: gl.constexpr,
                              BP: gl.constexpr, TRACE: gl.constexpr):
        # step="ws", warpgroup B (the worker partition): at step j, every block's conv1 over the block input
        # warpgroup A wrote in its step j, and the reduce of the last block's output of that step; at the last
        # position of a block of pixels, that block's reduce epilogue
        dt: gl.constexpr = rings.dtype
        HALF: gl.constexpr = KT // 2
        LAG: gl.constexpr = KT + 1
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WP, 16])
        accr_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, FP, 16])
        ld_r: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
        rr = gl.arange(0, WP, layout=gl.SliceLayout(1, ld_r))
        rc = gl.arange(0, FP, layout=gl.SliceLayout(0, ld_r))
        r_tile = gl.expand_dims(rr, 1) * FP + gl.expand_dims(rc, 0)
        offs_c = gl.arange(0, WP, layout=gl.SliceLayout(0, acc_l))
        zero_f = gl.zeros([BP, WP], gl.float32, acc_l)
        acc_r = gl.zeros([BP, FP], gl.float32, accr_l)
        nblk = (NPB - pid + G - 1) // G
        S = D + HALF
        n_steps = (nblk - 1) * S + D + NUM_BLOCKS * LAG
        trow = pid.to(gl.int64) * (n_steps + 1)  # TRACE: B's timestamps in columns 4-7 (TRACE_POINTS_WS)
        # the reduce's weights for the position of the last block's output A writes at step j (clamped: outside
        # [0, D) that output is zero), loaded a step ahead so the load's latency hides behind a step's wgmmas
        red_next = gl.load(red_w_ptr + gl.minimum(gl.maximum(_ws_position(-NUM_BLOCKS * LAG, S, D, nblk), 0), D - 1)
                           * WP * FP + r_tile)
        for j in range(0, n_steps):
            _mark(trace_ptr, trow + j, 4, TRACE)
            red_smem.store(red_next)  # its reader, the last step's reduce, completed there
            fence_async_shared()
            _cta_barrier()
            mbarrier.wait(done_a.index(j & 1), (j >> 1) & 1)
            _mark(trace_ptr, trow + j, 5, TRACE)
            accs = ()
            for b in gl.static_range(NUM_BLOCKS):
                accs = accs + (_conv_issue(rings, w_smem, 2 * b * RING, j - b * LAG, 2 * b * KT, zero_f, KT, RING),)
            acc_r = warpgroup_mma(lasts.index(j & 1), red_smem, acc_r, is_async=True)
            _mark(trace_ptr, trow + j, 6, TRACE)
            red_next = gl.load(red_w_ptr + gl.minimum(gl.maximum(_ws_position(j + 1 - NUM_BLOCKS * LAG, S, D, nblk), 0),
                                                      D - 1) * WP * FP + r_tile)
            waited = accs + (acc_r,)
            for b in gl.static_range(NUM_BLOCKS):
                waited = warpgroup_mma_wait(num_outstanding=(NUM_BLOCKS - 1 - b) * KT + 1, deps=waited)
                u = j - b * LAG - HALF
                acc = waited[b] + gl.expand_dims(gl.load(conv_b_ptr + (2 * b) * WP + offs_c), 0)
                if (RELU1_MASK >> b) & 1:
                    acc = _relu(acc)
                p_u = _ws_position(u, S, D, nblk)
                rings.index((2 * b + 1) * RING + (u & (RING - 1))).store(
                    gl.where((p_u >= 0) & (p_u < D), acc, 0.0).to(dt))
            waited = warpgroup_mma_wait(num_outstanding=0, deps=waited)
            acc_r = waited[NUM_BLOCKS]
            _mark(trace_ptr, trow + j, 7, TRACE)
            fence_async_shared()
            _cta_barrier()
            mbarrier.arrive(done_b.index(j & 1), count=1)
            g_r = j - NUM_BLOCKS * LAG  # the stream position this step reduced: a block's last, its epilogue
            if _ws_position(g_r, S, D, nblk) == D - 1:
                _reduce_out(acc_r, out_ptr, red_b_ptr, pid + (g_r // S) * G, P, F, stride_op, stride_of, BP, FP,
                            REDUCE_RELU, accr_l, dt)
                acc_r = gl.zeros([BP, FP], gl.float32, accr_l)

    @gluon.jit
    def _gluon_ws_kernel(
        x_ptr, out_ptr, stem_w_ptr, stem_b_ptr, conv_w_ptr, conv_b_ptr, red_w_ptr, red_b_ptr, trace_ptr,
        P, B, D, F, stride_xp, stride_xb, stride_op, stride_of, G, NPB,
        STEM_STRIDE: gl.constexpr, KS: gl.constexpr, KS_PAD: gl.constexpr, KT: gl.constexpr,
        NUM_BLOCKS: gl.constexpr, WP: gl.constexpr, FP: gl.constexpr, STEM_RELU: gl.constexpr,
        RELU1_MASK: gl.constexpr, RELU2_MASK: gl.constexpr, BLOCK_RELU_MASK: gl.constexpr,
        REDUCE_RELU: gl.constexpr, RING: gl.constexpr, BP: gl.constexpr, SW_W: gl.constexpr, SW_X: gl.constexpr,
        SW_R: gl.constexpr, WORKER_REGS: gl.constexpr, TRACE: gl.constexpr,
    ):
        """One band position per step over two warpgroups (``step="ws"``): warpgroup A runs the stem and every
        block's conv2, warpgroup B every block's conv1 and the reduce, one step apart, so one's epilogues run
        while the tensor cores take the other's wgmmas. Each block runs KT + 1 positions behind the one before
        it (one more than ``step="one"``): A's step j reads conv1 outputs of B's step j - 2, B's step j the block
        inputs of A's step j, and the two steps that may run at once touch disjoint ring slots. Two mbarriers per
        direction (alternate steps) so a phase parity never aliases. A program of a grid of G runs the blocks of
        BP pixels pid, pid + G, ... (NPB in all) as one stream of band positions, D per block and KT // 2 zeros
        between blocks, so one block's pipeline fill runs under the last one's drain (``step="wsp"``, G the SM
        count; ``ws`` launches one program per block, G = NPB)."""
        dt: gl.constexpr = x_ptr.dtype.element_ty
        tile_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_W, element_bitwidth=16, rank=2)
        stem_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_X, element_bitwidth=16, rank=2)
        red_s: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SW_R, element_bitwidth=16, rank=2)
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, WP, 16])
        ld_x: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # (64, 16) tiles

        pid = gl.program_id(0)
        w_smem, stem_smem = _conv_and_stem_weights(conv_w_ptr, stem_w_ptr, dt, 2 * NUM_BLOCKS * KT, KS_PAD, WP, tile_s)
        red_smem = gl.allocate_shared_memory(dt, [WP, FP], red_s)
        rings = _zeroed_tiles(dt, 2 * NUM_BLOCKS * RING, BP, WP, tile_s, acc_l)
        lasts = _zeroed_tiles(dt, 2, BP, WP, tile_s, acc_l)  # the last block's output of alternate steps
        xp = pid * BP + gl.arange(0, BP, layout=gl.SliceLayout(1, ld_x))
        xk = gl.arange(0, KS_PAD, layout=gl.SliceLayout(0, ld_x))
        xs_smem = gl.allocate_shared_memory(dt, [BP, KS_PAD], stem_s, gl.load(
            x_ptr + gl.expand_dims(xp.to(gl.int64), 1) * stride_xp + gl.expand_dims(xk, 0) * stride_xb,
            mask=gl.expand_dims(xp < P, 1) & gl.expand_dims((xk < KS) & (xk < B), 0), other=0.0).to(dt))
        done_a = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        done_b = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(done_a.index(i), count=1)
            mbarrier.init(done_b.index(i), count=1)
        fence_async_shared()
        _cta_barrier()
        gl.warp_specialize([
            (_ws_stem_and_conv2s, (rings, w_smem, stem_smem, xs_smem, lasts, done_a, done_b, x_ptr, stem_b_ptr,
                                   conv_b_ptr, trace_ptr, pid, P, B, D, G, NPB, stride_xp, stride_xb, STEM_STRIDE, KS,
                                   KS_PAD, KT, NUM_BLOCKS, WP, STEM_RELU, RELU2_MASK, BLOCK_RELU_MASK, RING, BP,
                                   TRACE)),
            (_ws_conv1s_and_reduce, (rings, w_smem, red_smem, lasts, done_a, done_b, out_ptr, conv_b_ptr, red_w_ptr,
                                     red_b_ptr, trace_ptr, pid, P, D, F, G, NPB, stride_op, stride_of, KT, NUM_BLOCKS,
                                     WP, FP, RELU1_MASK, REDUCE_RELU, RING, BP, TRACE)),
        ], [4], [WORKER_REGS])



SHARED_LIMIT = 232_448  # bytes of shared memory one program may use on an H100 / H200 (227 KB)


def _resolve_step(waits: str, identity: str, step: str | None,
                  program: SpectralProgram | None = None) -> str:
    """``step`` as given; None: the default step where ``waits`` and ``identity`` allow it (``pair`` and ``ws`` run
    the ``layer`` waits with the identity in the epilogue) and ``program`` fits its shared memory, else ``one``.
    Read when called, so a changed :data:`DEFAULT_STEP` applies."""
    if step is not None:
        return step
    if (waits, identity) != ("layer", "epilogue"):
        return "one"
    if program is not None and DEFAULT_STEP != "one" and shared_bytes(program, identity, DEFAULT_STEP) > SHARED_LIMIT:
        return "one"  # ws needs one more tile than one: a program at the edge of an SM's memory runs one
    return DEFAULT_STEP


def _check_form(waits: str, identity: str, step: str = "one") -> None:
    if waits not in WAITS:
        raise OptionError(f"waits must be one of {list(WAITS)}; got {waits!r}")
    if identity not in IDENTITIES:
        raise OptionError(f"identity must be one of {list(IDENTITIES)}; got {identity!r}")
    if step not in STEPS:
        raise OptionError(f"step must be one of {list(STEPS)}; got {step!r}")
    if step != "one" and (waits, identity) != ("layer", "epilogue"):
        raise OptionError(f"step={step!r} waits per layer and adds the identity in the epilogue (waits='layer', "
                         f"identity='epilogue'); got waits={waits!r}, identity={identity!r}")


def _layout_constants(m: dict, waits: str = DEFAULT_WAITS, identity: str = DEFAULT_IDENTITY) -> dict:
    """The kernel's constexprs beyond the packed program's (``m``: its ``meta``): ring depth, rows, swizzles,
    how a step waits for its wgmmas (``waits``, a key of :data:`WAITS`) and where a block's identity is added
    (``identity``, one of :data:`IDENTITIES`; ``mma`` needs no ReLU between conv2 and the add)."""
    from .spectral import _next_pow2

    _check_form(waits, identity)
    if identity == "mma" and m["RELU2_MASK"]:
        raise OptionError("identity='mma' adds the identity inside conv2's sum: it needs blocks without a ReLU "
                         "after conv2 (the SSRN's); this program has one: use identity='epilogue'")
    split, stem_last = WAITS[waits]
    return dict(RING=_next_pow2(m["KT"] + 1, 2), BP=BLOCK_P, SW_W=min(128, 2 * m["WP"]),
                SW_X=min(128, 2 * m["KS_PAD"]), SW_R=min(128, 2 * m["FP"]), SPLIT_WAIT=split, STEM_LAST=stem_last,
                ID_MMA=identity == "mma")


def _pair_constants(m: dict) -> dict:
    """``step="pair"``'s constexprs beyond the packed program's (``m``: its ``meta``)."""
    from .spectral import _next_pow2

    ks2_pad = _next_pow2(m["KS"] + m["STEM_STRIDE"])  # the stem's bands for a pair; K >= 16 for a wgmma
    return dict(STEM_STRIDE=m["STEM_STRIDE"], KS2=m["KS"] + m["STEM_STRIDE"], KS2_PAD=ks2_pad, KT=m["KT"],
                NUM_BLOCKS=m["NUM_BLOCKS"], WP=m["WP"], FP=m["FP"], STEM_RELU=m["STEM_RELU"],
                RELU1_MASK=m["RELU1_MASK"], RELU2_MASK=m["RELU2_MASK"], BLOCK_RELU_MASK=m["BLOCK_RELU_MASK"],
                REDUCE_RELU=m["REDUCE_RELU"], RING=_next_pow2(m["KT"] + 1, 2), BP=BLOCK_P, SW_W=min(128, 2 * m["WP"]),
                SW_X=min(128, 2 * ks2_pad), SW_S=min(128, 4 * m["WP"]), SW_R=min(128, 2 * m["FP"]),
                PUBLIC_REINTERPRET=hasattr(gl.shared_memory_descriptor, "reinterpret"))


_PROGRAM_KEYS = ("STEM_STRIDE", "KS", "KS_PAD", "KT", "NUM_BLOCKS", "WP", "FP", "STEM_RELU", "RELU1_MASK",
                 "RELU2_MASK", "BLOCK_RELU_MASK", "REDUCE_RELU")  # the packed program's constexprs the kernels take


def _one_constants(m: dict, waits: str = DEFAULT_WAITS, identity: str = DEFAULT_IDENTITY) -> dict:
    """``step="one"``'s constexprs: the packed program's (``m``: its ``meta``) and :func:`_layout_constants`."""
    return dict({k: m[k] for k in _PROGRAM_KEYS}, **_layout_constants(m, waits, identity))


def _ws_constants(m: dict) -> dict:
    """``step="ws"``'s constexprs (``m``: the packed program's ``meta``): ``one``'s ring, rows and swizzles, and
    the second warpgroup's registers."""
    one = _one_constants(m)
    return dict({k: one[k] for k in _PROGRAM_KEYS + ("RING", "BP", "SW_W", "SW_X", "SW_R")},
                WORKER_REGS=WS_WORKER_REGS)


def _pack_pair(program: SpectralProgram, device: torch.device, dtype: torch.dtype) -> dict:
    """``step="pair"``'s weights, beside the packed program's (cached with it): ``stem_w`` (KS2_PAD, 2 WP), the
    stem's taps for the two positions of a pair (the second STEM_STRIDE bands later); ``conv_w``, each conv's
    taps transposed (c_out, c_in), last tap first, between zero tiles (2 NB (KT + 1) + 1 tiles), so that any
    two neighbours [W_i; W_{i-1}] are one K-major (2 WP, WP) operand."""
    from .spectral import _next_pow2, _pack

    pk = _pack(program, device, dtype)
    hit = pk.get("gluon_pair")
    if hit is not None:
        return hit
    m = pk["meta"]
    ks, stride, kt, wp, nc = m["KS"], m["STEM_STRIDE"], m["KT"], m["WP"], 2 * m["NUM_BLOCKS"]
    stem = torch.zeros(_next_pow2(ks + stride), 2 * wp, device=device, dtype=dtype)
    stem[:ks, :wp] = pk["stem_w"][:ks]
    stem[stride:stride + ks, wp:] = pk["stem_w"][:ks]
    taps = pk["conv_w"].view(nc, kt, wp, wp)  # (conv, tap, c_in, c_out)
    conv = torch.zeros(nc * (kt + 1) + 1, wp, wp, device=device, dtype=dtype)
    for c in range(nc):
        conv[c * (kt + 1) + 1:(c + 1) * (kt + 1)] = taps[c].flip(0).transpose(1, 2)
    pk["gluon_pair"] = hit = dict(stem_w=stem.contiguous(), conv_w=conv.contiguous())
    return hit


def shared_bytes(program: SpectralProgram, identity: str = DEFAULT_IDENTITY, step: str | None = None) -> int:
    """Shared memory the kernel allocates for ``program`` (16-bit tiles): conv weights, activation rings, the
    last block's output, the stem's weights and input, the reduce weights of one position (and with
    ``identity="mma"`` the identity matrix)."""
    from .spectral import _next_pow2

    step = _resolve_step(DEFAULT_WAITS, identity, step)
    wp, fp = _next_pow2(program.width), _next_pow2(program.out_features)
    nb, ks_pad = len(program.blocks), _next_pow2(program.stem.weight.shape[2])
    kt = program.blocks[0].conv1.weight.shape[2] if nb else 1
    ring = _next_pow2(kt + 1, 2)
    if step == "pair":  # tap tiles between zero tiles, the stem's pair taps and input, two reduce tiles, `last` x 2
        ks2_pad = _next_pow2(program.stem.weight.shape[2] + program.stem.stride)
        return 2 * ((2 * nb * (kt + 1) + 1) * wp * wp + 2 * nb * ring * BLOCK_P * wp + 2 * BLOCK_P * wp
                    + ks2_pad * 2 * wp + BLOCK_P * ks2_pad + 2 * wp * fp)
    tiles = 2 * nb * kt * wp * wp + 2 * nb * ring * BLOCK_P * wp + BLOCK_P * wp + ks_pad * wp + BLOCK_P * ks_pad \
        + wp * fp + (wp * wp if identity == "mma" else 0)
    if step in WS_STEPS:  # the last block's output of alternate steps (one more tile), four 8-byte mbarriers
        return 2 * (tiles + BLOCK_P * wp) + 4 * 8
    return 2 * tiles


def _check(x: torch.Tensor, program: SpectralProgram, step: str = "one") -> None:
    from .spectral import _check_pixels, _check_program

    if GLUON_ERROR is not None:
        raise RuntimeError(f"spectral_stage_gluon needs Triton's Gluon with Hopper support ({GLUON_ERROR})")
    _check_pixels(x, program)
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise OptionTypeError(f"spectral_stage_gluon runs bfloat16 or float16; got {x.dtype}")
    _check_program(program)
    if not program.blocks:
        raise NotImplementedError("spectral_stage_gluon needs at least one residual block; use spectral_stage_triton")
    if any(b.pre is not None for b in program.blocks) or program.post:
        raise NotImplementedError("spectral_stage_gluon implements the paper's block form only (no pre-activation "
                                  "or stage affines); use spectral_stage_triton")
    if program.width > 32 or program.out_features > 256:
        raise NotImplementedError(f"spectral_stage_gluon handles width <= 32 and <= 256 features; got "
                                  f"{program.width}, {program.out_features}")
    kt = program.blocks[0].conv1.weight.shape[2]  # odd (_check_program): step='pair' runs blocks KT + 1 apart
    need = shared_bytes(program, step=step)
    if need > SHARED_LIMIT:
        raise NotImplementedError(f"spectral_stage_gluon(step={step!r}) would need {need} B of shared memory for "
                                  f"this program ({len(program.blocks)} blocks, kernel {kt}); an H100 / H200 SM has "
                                  f"{SHARED_LIMIT}: use spectral_stage_triton")
    if x.device.type != "cuda":
        raise OptionError(f"spectral_stage_gluon needs a CUDA tensor on a Hopper GPU; got one on {x.device}")
    cap = torch.cuda.get_device_capability(x.device)
    if cap != (9, 0):  # wgmma exists on sm_90 alone
        raise OptionError(f"spectral_stage_gluon needs a Hopper GPU (compute capability 9.0, wgmma); "
                         f"{torch.cuda.get_device_name(x.device)} is {cap[0]}.{cap[1]}: use spectral_stage_triton")


def gluon_unsupported(x: torch.Tensor, program: SpectralProgram, step: str | None = None) -> str | None:
    """None when :func:`spectral_stage_gluon` can run ``program`` on ``x`` here (with ``step``, None: the
    default's); else why not (then the ``triton`` backend runs :func:`kernels.spectral.spectral_stage_triton`)."""
    try:
        _check(x, program, _resolve_step(DEFAULT_WAITS, DEFAULT_IDENTITY, step, program))
    except (RuntimeError, TypeError, NotImplementedError, ValueError) as e:
        return str(e)
    return None


def spectral_stage_gluon(x: torch.Tensor, program: SpectralProgram, *, waits: str = DEFAULT_WAITS,
                         identity: str = DEFAULT_IDENTITY, step: str | None = None,
                         programs: int | None = None) -> torch.Tensor:
    """Gluon spectral stage: ``x (P, bands)`` bf16/fp16 on a Hopper GPU -> ``(P, out_features)``.

    Same contract as :func:`kernels.spectral.spectral_stage_reference` for the forms it covers (see the module
    docstring); fp32 accumulation, the input's dtype at every layer boundary, as the Triton kernel.
    ``waits``: how each band position waits for its wgmmas (:data:`WAITS`): ``phase`` once per phase (the
    first kernel), ``layer`` per layer, overlapping each epilogue with the later layers' wgmmas, ``stem_last``
    the same with the stem issued last in phase A. Same arithmetic either way. ``identity``: ``epilogue`` adds each
    block's identity after conv2's wgmmas; ``mma`` folds it into them (:data:`IDENTITIES`; the float32 sums then
    run in another order). ``step``: how a step is laid out (:data:`STEPS`): ``one`` position on one warpgroup;
    ``pair``, each conv's output pair in one accumulator twice as wide; ``ws``, one position over two warpgroups;
    ``wsp``, ``ws`` with one program per SM, each running its blocks of pixels as one stream of band positions
    (``pair``, ``ws`` and ``wsp`` need ``waits="layer"``, ``identity="epilogue"``); None: :data:`DEFAULT_STEP`
    (``wsp``) where ``waits`` and ``identity`` allow it, else ``one``. ``programs``: ``wsp``'s grid (None: the
    SM count); a check on a few pixels passes 2, so that each program runs several blocks as on a whole chunk."""
    step = _resolve_step(waits, identity, step, program)
    _check_form(waits, identity, step)
    _check(x, program, step)
    return _run(x, program, waits=waits, identity=identity, step=step, programs=programs)


def trace_steps(program: SpectralProgram, step: str = "one") -> int:
    """Steps of the kernel's band loop for ``program`` and one block of pixels: positions plus the pipeline's fill,
    per ``step`` (``wsp``: a program's first block; each later one adds ``reduced_bands + KT // 2``)."""
    d, nb, kt = program.reduced_bands, len(program.blocks), program.blocks[0].conv1.weight.shape[2]
    if step == "pair":
        return (d + 1) // 2 + nb * (kt + 1) // 2
    return d + nb * (kt + 1) if step in WS_STEPS else d + nb * kt


def traced_run(x: torch.Tensor, program: SpectralProgram, *, waits: str = DEFAULT_WAITS,
               identity: str = DEFAULT_IDENTITY, step: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spectral_stage_gluon` compiled with ``TRACE``: its output, and the SM-cycle timestamps of every
    program's steps, ``(programs, steps + 1, TRACE_WIDTH)`` int64 (:data:`TRACE_POINTS`; the last row holds the
    program's start and end). A diagnostic for ``benchmarks/gluon_trace.py``: where a step's time goes. The
    default step, ``wsp``, is traced as ``ws`` (one program per block, the same step)."""
    asked = step
    step = _resolve_step(waits, identity, step, program)
    if step == "wsp" and asked is None:
        step = "ws"  # the default's step, one program per block of pixels: what a trace's rows can hold
    _check_form(waits, identity, step)
    if step == "wsp":
        raise OptionError("traced_run times one block of pixels per program; step='wsp' runs several per program: "
                         "trace step='ws' (the same step, one program per block)")
    _check(x, program, step)
    trace = torch.zeros(-(-x.shape[0] // BLOCK_P), trace_steps(program, step) + 1, TRACE_WIDTH, dtype=torch.int64,
                        device=x.device)
    return _run(x, program, waits=waits, identity=identity, step=step, trace=trace), trace


def _run(x: torch.Tensor, program: SpectralProgram, *, waits: str = DEFAULT_WAITS,
         identity: str = DEFAULT_IDENTITY, step: str = "one", trace: torch.Tensor | None = None,
         programs: int | None = None) -> torch.Tensor:
    """:func:`spectral_stage_gluon` once ``x`` and ``program`` passed its checks (the dispatcher has run them);
    with ``trace`` (from :func:`traced_run`) the traced build, writing its timestamps there. ``programs``:
    ``step="wsp"``'s grid (default: the SM count), so that a check on a few pixels runs several blocks per program,
    as the engine's chunks do."""
    from .spectral import _bands_addressable, _pack

    x = _bands_addressable(x)
    p, f = x.shape[0], program.out_features
    out = torch.empty(p, f, device=x.device, dtype=x.dtype)
    if p == 0:
        return out
    pk = _pack(program, x.device, x.dtype)
    m = pk["meta"]
    tr = trace if trace is not None else out  # not read without TRACE
    if step == "pair":
        pair = _pack_pair(program, x.device, x.dtype)
        with torch.cuda.device(x.device):
            _gluon_pair_kernel[(-(-p // BLOCK_P),)](
                x, out, pair["stem_w"], pk["stem_b"], pair["conv_w"], pk["conv_b"], pk["red_w"], pk["red_b"], tr,
                p, program.bands, program.reduced_bands, f, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                **_pair_constants(m), TRACE=trace is not None, num_warps=4)
        return out
    if step in WS_STEPS:
        npb = -(-p // BLOCK_P)
        grid = npb if step == "ws" else min(npb, programs or torch.cuda.get_device_properties(x.device)
                                            .multi_processor_count)
        with torch.cuda.device(x.device):
            _gluon_ws_kernel[(grid,)](
                x, out, pk["stem_w"], pk["stem_b"], pk["conv_w"], pk["conv_b"], pk["red_w"], pk["red_b"], tr,
                p, program.bands, program.reduced_bands, f, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                grid, npb, **_ws_constants(m), TRACE=trace is not None, num_warps=4)
        return out
    with torch.cuda.device(x.device):
        _gluon_stage_kernel[(-(-p // BLOCK_P),)](
            x, out, pk["stem_w"], pk["stem_b"], pk["conv_w"], pk["conv_b"], pk["red_w"], pk["red_b"], tr,
            p, program.bands, program.reduced_bands, f, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            **_one_constants(m, waits, identity), TRACE=trace is not None, num_warps=4)
    return out
