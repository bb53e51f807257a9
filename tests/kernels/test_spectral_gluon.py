"""The Gluon spectral stage (kernels/spectral_gluon.py).

No GPU here: on CPU, the kernel's schedule (activation rings of RING slots, two phases per band position,
block b running b * KT positions behind the stem) is replayed in float64 torch and must give the reference;
the kernel itself is compiled offline for Hopper (sm_90) and its wrapper's errors are checked. On a GPU
(``-m gpu``) the kernel runs against the reference at realistic sizes, with the tolerances of the Triton
kernel's tests (bf16 / fp16: <= 2 x plain torch's error + 1e-3 x scale, never over 1e-2 x scale).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.spectral import _next_pow2, _random_program, spectral_stage_reference


def _replay_conv(rings: torch.Tensor, base: int, newest: int, c, kt: int, ring: int) -> torch.Tensor:
    """A conv at one position, as the one-position kernels read it: tap t from the ring slot of position
    newest - (KT - 1) + t, then bias and ReLU."""
    acc = c.bias.expand(rings.shape[1], -1).clone()
    for t in range(kt):
        acc = acc + rings[base + ((newest - (kt - 1) + t) & (ring - 1))] @ c.weight[:, :, t].t()
    return F.relu(acc) if c.relu else acc


def _replay_residual(conv2: torch.Tensor, identity: torch.Tensor, blk, q: int, d: int) -> torch.Tensor:
    """A block's output at position q: conv2 + identity, the block's ReLU, zero outside [0, D)."""
    y = conv2 + identity
    y = F.relu(y) if blk.relu else y
    return y if 0 <= q < d else torch.zeros_like(y)


def _replay_schedule(x: torch.Tensor, prog) -> torch.Tensor:
    """The Gluon kernel's loop, step for step, on whole tensors (float64): which slot each tap reads, which
    position each layer writes in which phase, zero outside [0, D)."""
    p, bands = x.shape
    w, kt, d = prog.width, prog.blocks[0].conv1.weight.shape[2], prog.reduced_bands
    nb, half, behind, ring = len(prog.blocks), kt // 2, kt, _next_pow2(kt + 1, 2)
    rings = torch.zeros(2 * nb * ring, p, w, dtype=x.dtype)
    last = torch.zeros(p, w, dtype=x.dtype)
    acc_r = torch.zeros(p, prog.out_features, dtype=x.dtype)
    stem, ks = prog.stem, prog.stem.weight.shape[2]

    def conv(base: int, newest: int, c) -> torch.Tensor:
        return _replay_conv(rings, base, newest, c, kt, ring)

    for j in range(d + nb * behind):
        cols = j * stem.stride + torch.arange(ks)
        s = torch.where(cols < bands, x[:, cols.clamp(max=bands - 1)], 0.0) @ stem.weight[:, 0, :].t() + stem.bias
        s = F.relu(s) if stem.relu else s
        c2 = [conv((2 * b + 1) * ring, j - 1 - b * behind - half, blk.conv2) for b, blk in enumerate(prog.blocks)]
        rings[j & (ring - 1)] = s if 0 <= j < d else 0  # phase A: stem, conv2 + identity
        for b, blk in enumerate(prog.blocks):
            q = j - (b + 1) * behind
            y = _replay_residual(c2[b], rings[2 * b * ring + (q & (ring - 1))], blk, q, d)
            if b + 1 < nb:
                rings[2 * (b + 1) * ring + (q & (ring - 1))] = y
            else:
                last = y
        c1 = [conv(2 * b * ring, j - b * behind, blk.conv1) for b, blk in enumerate(prog.blocks)]  # phase B
        acc_r = acc_r + last @ prog.reduce.weight[:, :, min(max(j - nb * behind, 0), d - 1)].t()
        for b in range(nb):
            u = j - b * behind - half
            rings[(2 * b + 1) * ring + (u & (ring - 1))] = c1[b] if 0 <= u < d else 0
    out = acc_r + prog.reduce.bias
    return F.relu(out) if prog.reduce.relu else out


def _replay_pair_schedule(x: torch.Tensor, prog, *, last_block_first: bool = True) -> torch.Tensor:
    """``step="pair"``'s loop, step for step, on whole tensors (float64), with the weights as the kernel reads
    them (``_pack_pair``): each conv's output pair from its KT + 1 input slots against two stacked tap tiles, the
    identity read from a slot the layer before then overwrites (RING = KT + 1), zero outside [0, D).
    ``last_block_first=False`` runs phase A's epilogues in the other order (the test that the replay can fail)."""
    from kernels.spectral import _pack
    from kernels.spectral_gluon import _pack_pair

    p, bands = x.shape
    pk, pair = _pack(prog, x.device, x.dtype), _pack_pair(prog, x.device, x.dtype)
    m = pk["meta"]
    wp, kt, nb, d, stride, ks2 = m["WP"], m["KT"], m["NUM_BLOCKS"], prog.reduced_bands, m["STEM_STRIDE"], \
        m["KS"] + m["STEM_STRIDE"]
    half, lag, ring = kt // 2, kt + 1, _next_pow2(kt + 1, 2)
    wbuf, conv_b, red_w = pair["conv_w"], pk["conv_b"].to(x.dtype), pk["red_w"]
    rings = torch.zeros(2 * nb * ring, p, wp, dtype=x.dtype)
    last = torch.zeros(2, p, wp, dtype=x.dtype)
    acc_r = torch.zeros(p, red_w.shape[2], dtype=x.dtype)
    k2 = torch.arange(pair["stem_w"].shape[0])

    def stem_input(j: int) -> torch.Tensor:
        cols = j * stride + k2
        return torch.where((cols < bands) & (k2 < ks2), x[:, cols.clamp(max=bands - 1)], 0.0)

    def taps(base: int, first: int, conv: int) -> tuple[torch.Tensor, torch.Tensor]:
        acc = torch.zeros(p, 2 * wp, dtype=x.dtype)
        for i in range(kt + 1):
            two = wbuf[conv * (kt + 1) + kt - i:conv * (kt + 1) + kt - i + 2].reshape(2 * wp, wp)
            acc = acc + rings[base + ((first + i) & (ring - 1))] @ two.t()
        return acc[:, :wp], acc[:, wp:]

    def zero_outside(y: torch.Tensor, pos: int) -> torch.Tensor:
        return y if 0 <= pos < d else torch.zeros_like(y)

    xs = stem_input(0)
    for s in range((d + 1) // 2 + nb * lag // 2):
        j = 2 * s
        c2 = [taps((2 * b + 1) * ring, j - (b + 1) * lag - half, 2 * b + 1) for b in range(nb)]  # phase A
        sa = xs @ pair["stem_w"]
        for b in (reversed(range(nb)) if last_block_first else range(nb)):
            q = j - (b + 1) * lag
            for e in range(2):
                y = c2[b][e] + conv_b[2 * b + 1]
                y = F.relu(y) if prog.blocks[b].conv2.relu else y
                y = y + rings[2 * b * ring + ((q + e) & (ring - 1))]
                y = zero_outside(F.relu(y) if prog.blocks[b].relu else y, q + e)
                if b + 1 < nb:
                    rings[2 * (b + 1) * ring + ((q + e) & (ring - 1))] = y
                else:
                    last[e] = y
        for e in range(2):
            y = sa[:, e * wp:(e + 1) * wp] + pk["stem_b"].to(x.dtype)
            rings[(j + e) & (ring - 1)] = zero_outside(F.relu(y) if prog.stem.relu else y, j + e)
        xs = stem_input(j + 2)  # phase B
        c1 = [taps(2 * b * ring, j - half - b * lag - half, 2 * b) for b in range(nb)]
        y_last = j - nb * lag
        acc_r = acc_r + last[0] @ red_w[min(max(y_last, 0), d - 1)] + last[1] @ red_w[min(max(y_last + 1, 0), d - 1)]
        for b in range(nb):
            u = j - half - b * lag
            for e in range(2):
                y = c1[b][e] + conv_b[2 * b]
                rings[(2 * b + 1) * ring + ((u + e) & (ring - 1))] = zero_outside(
                    F.relu(y) if prog.blocks[b].conv1.relu else y, u + e)
    out = acc_r + pk["red_b"].to(x.dtype)
    return (F.relu(out) if prog.reduce.relu else out)[:, :prog.out_features]


def _ws_slots(kt: int, nb: int, j: int, *, behind: int = 2, ring: int | None = None) -> dict[str, tuple[set, set]]:
    """step="ws"'s ring slots per warpgroup step: ``{"A": (reads, writes), "B": (reads, writes)}`` of warpgroup
    A's step j (every block's conv2 and identity, the stem) and warpgroup B's step j (conv1s, the reduce), as
    (ring, block, slot) triples. ``behind``: how many steps back the conv1 outputs A's conv2s read were written
    (the kernel's 2); ``ring``: slots per ring (the kernel's next power of two >= KT + 1)."""
    half, lag = kt // 2, kt + 1
    ring = _next_pow2(kt + 1, 2) if ring is None else ring
    a_reads, a_writes, b_reads, b_writes = set(), set(), set(), set()
    for b in range(nb):
        newest_h = j - behind - b * lag - half  # conv2 reads conv1 outputs of B's step j - behind and earlier
        a_reads |= {("H", b, (newest_h - (kt - 1) + t) % ring) for t in range(kt)}
        q = j - (b + 1) * lag
        a_reads.add(("X", b, q % ring))  # the identity
        a_writes.add(("X", b + 1, q % ring) if b + 1 < nb else ("last", 0, j % 2))
        b_reads |= {("X", b, (j - b * lag - (kt - 1) + t) % ring) for t in range(kt)}
        b_writes.add(("H", b, (j - b * lag - half) % ring))
    a_writes.add(("X", 0, j % ring))
    b_reads.add(("last", 0, j % 2))
    return {"A": (a_reads, a_writes), "B": (b_reads, b_writes)}


def _ws_overlap_hazards(kt: int, nb: int, steps: int, **layout) -> list[tuple[int, str]]:
    """Where A's step j and B's step j - 1, the two that may run at once, touch a slot one of them writes."""
    out = []
    for j in range(1, steps):
        (ar, aw), (br, bw) = _ws_slots(kt, nb, j, **layout)["A"], _ws_slots(kt, nb, j - 1, **layout)["B"]
        for what, clash in (("A writes what B reads", aw & br), ("B writes what A reads", bw & ar),
                            ("both write", aw & bw)):
            if clash:
                out.append((j, f"{what}: {sorted(clash)}"))
    return out


def _ws_position(g: int, s: int, d: int, nblk: int) -> int:
    """The kernel's _ws_position: stream position g -> its block's band position, -1 outside the stream."""
    k = max(g, 0) // s
    return g - k * s if g >= 0 and k < nblk else -1


def _replay_ws_schedule(x: torch.Tensor, prog, *, rows: int | None = None, grid: int = 1,
                        gap: int | None = None) -> torch.Tensor:
    """``step="ws"``'s loop (float64) for a grid of ``grid`` programs, each running its blocks of ``rows`` pixels
    (None: one block of all of them) pid, pid + grid, ... as one stream of band positions, D per block and
    ``gap`` zeros between blocks (the kernel's KT // 2). At step j warpgroup A's conv2s (last block first, each
    over the conv1 outputs of B's step j - 2), then the stem; then B's step j (conv1s over A's step j, the reduce of
    A's step-j output, and at a block's last position that block's output). Blocks KT + 1 positions apart, the
    last block's output in alternate buffers. Run in this order; the kernel may run A's step j beside B's step
    j - 1, which _ws_overlap_hazards shows touch disjoint slots."""
    p, bands = x.shape
    w, kt, d = prog.width, prog.blocks[0].conv1.weight.shape[2], prog.reduced_bands
    nb, half, lag, ring = len(prog.blocks), kt // 2, kt + 1, _next_pow2(kt + 1, 2)
    rows = p if rows is None else rows
    npb, s = -(-p // rows), d + (half if gap is None else gap)
    stem, ks = prog.stem, prog.stem.weight.shape[2]
    xp = torch.cat([x, x.new_zeros(npb * rows - p, bands)])  # rows past P read as zeros, as the kernel's masks do
    out = x.new_zeros(npb * rows, prog.out_features)
    for pid in range(grid):
        nblk = (npb - pid + grid - 1) // grid
        rings = x.new_zeros(2 * nb * ring, rows, w)
        last = x.new_zeros(2, rows, w)
        acc_r = x.new_zeros(rows, prog.out_features)

        def conv(base: int, newest: int, c) -> torch.Tensor:
            return _replay_conv(rings, base, newest, c, kt, ring)

        def real(g: int) -> bool:
            return 0 <= _ws_position(g, s, d, nblk) < d

        for j in range((nblk - 1) * s + d + nb * lag):
            c2 = [conv((2 * b + 1) * ring, j - 2 - b * lag - half, blk.conv2) for b, blk in enumerate(prog.blocks)]
            for b in reversed(range(nb)):  # A
                q = j - (b + 1) * lag
                y = _replay_residual(c2[b], rings[2 * b * ring + (q & (ring - 1))], prog.blocks[b], 0 if real(q) else -1, d)
                if b + 1 < nb:
                    rings[2 * (b + 1) * ring + (q & (ring - 1))] = y
                else:
                    last[j & 1] = y
            k = j // s
            cols = (j - k * s) * stem.stride + torch.arange(ks)
            xb = xp[(pid + k * grid) * rows:(pid + k * grid + 1) * rows] if k < nblk else x.new_zeros(rows, bands)
            sv = torch.where(cols < bands, xb[:, cols.clamp(max=bands - 1)], 0.0) @ stem.weight[:, 0, :].t() + stem.bias
            rings[j & (ring - 1)] = (F.relu(sv) if stem.relu else sv) if real(j) else 0
            c1 = [conv(2 * b * ring, j - b * lag, blk.conv1) for b, blk in enumerate(prog.blocks)]  # B
            g_r = j - nb * lag
            pos = _ws_position(g_r, s, d, nblk)
            acc_r = acc_r + last[j & 1] @ prog.reduce.weight[:, :, min(max(pos, 0), d - 1)].t()
            for b in range(nb):
                u = j - b * lag - half
                rings[(2 * b + 1) * ring + (u & (ring - 1))] = c1[b] if real(u) else 0
            if pos == d - 1:
                o = acc_r + prog.reduce.bias
                blk_i = pid + (g_r // s) * grid
                out[blk_i * rows:(blk_i + 1) * rows] = F.relu(o) if prog.reduce.relu else o
                acc_r = torch.zeros_like(acc_r)
    return out[:p]


@pytest.mark.parametrize("kernel,blocks", [(7, 2), (7, 1), (7, 3), (5, 2), (3, 3), (1, 2)])
def test_ws_steps_that_may_overlap_touch_disjoint_slots(kernel: int, blocks: int) -> None:
    """step="ws" lets warpgroup A's step j run beside B's step j - 1: neither writes a slot the other reads, at
    every step of a 200-band program. The check can fail: A's conv2s reading the conv1 outputs of B's step j - 1
    (the one-position kernel's dependency) clash with B's step j - 1 writing them, and so do rings one slot
    short."""
    steps = 97 + blocks * (kernel + 1)
    assert _ws_overlap_hazards(kernel, blocks, steps) == []
    assert any("B writes what A reads" in why for _, why in _ws_overlap_hazards(kernel, blocks, steps, behind=1))
    assert _ws_overlap_hazards(kernel, blocks, steps, ring=kernel + 1) == []
    assert _ws_overlap_hazards(kernel, blocks, steps, ring=kernel)


@pytest.mark.parametrize("step", ["one", "pair", "ws"])
@pytest.mark.parametrize("bands,kernel,blocks,width,relu2", [(200, 7, 2, 24, False), (103, 7, 2, 24, True),
                                                             (23, 7, 2, 20, False), (31, 5, 3, 16, True),
                                                             (17, 3, 1, 24, False), (12, 1, 2, 16, False),
                                                             (9, 7, 1, 24, True), (24, 7, 2, 24, False)])
def test_schedule_computes_the_reference(bands: int, kernel: int, blocks: int, width: int, relu2: bool,
                                         step: str) -> None:
    """Every form's schedule; for step='pair' odd and even position counts (97, 52, 9, 13, 6, 3, 12 band
    positions), rings of exactly KT + 1 slots (kernel 7, 3, 1) and wider ones (kernel 5); step='ws' with blocks
    KT + 1 apart and the last block's output in alternate buffers."""
    g = torch.Generator().manual_seed(bands * 10 + kernel)
    prog = _random_program(bands, width, 40, blocks=blocks, kernel=kernel, conv2_relu=relu2,
                           generator=g).to(dtype=torch.float64)
    x = torch.randn(5, bands, generator=g, dtype=torch.float64)
    ref = spectral_stage_reference(x, prog)
    assert ref.abs().max() > 0.1
    replay = {"one": _replay_schedule, "pair": _replay_pair_schedule, "ws": _replay_ws_schedule}[step]
    assert ((replay(x, prog) - ref).abs().max() / ref.abs().max()).item() < 1e-12


@pytest.mark.parametrize("bands,kernel,blocks,width,grid", [(40, 7, 2, 24, 2), (23, 7, 2, 20, 1), (23, 7, 2, 20, 3),
                                                            (31, 5, 3, 16, 2), (17, 3, 1, 24, 1), (12, 1, 2, 16, 2),
                                                            (9, 7, 1, 24, 5), (9, 7, 1, 24, 3)])
def test_persistent_ws_schedule_computes_the_reference(bands: int, kernel: int, blocks: int, width: int,
                                                        grid: int) -> None:
    """step='wsp': each program runs its blocks of pixels as one stream of band positions, KT // 2 zeros between
    blocks (9 pixels in blocks of 2: 5 blocks; grids of 1, 2, 3 and 5 programs run 5, 3 + 2, 2 + 2 + 1 and one
    block each). The replay can fail: one zero fewer between blocks lets a block's convs read the next one's
    first positions."""
    g = torch.Generator().manual_seed(bands * 10 + kernel + grid)
    prog = _random_program(bands, width, 40, blocks=blocks, kernel=kernel, conv2_relu=bool(blocks % 2),
                           generator=g).to(dtype=torch.float64)
    x = torch.randn(9, bands, generator=g, dtype=torch.float64)
    ref = spectral_stage_reference(x, prog)
    assert ref.abs().max() > 0.1
    err = ((_replay_ws_schedule(x, prog, rows=2, grid=grid) - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-12
    if kernel > 1 and grid < 5:  # some program runs two blocks, and there is a gap to shorten
        short = _replay_ws_schedule(x, prog, rows=2, grid=grid, gap=kernel // 2 - 1)
        assert ((short - ref).abs().max() / ref.abs().max()).item() > 1e-6


@pytest.mark.parametrize("stride,kernel", [(1, 7), (3, 5), (4, 3)])
def test_pair_schedule_with_other_stem_strides(stride: int, kernel: int) -> None:
    """The pair form's stem reads KS + stride bands per step (its second position stride bands later): its packed
    taps and input window hold for strides other than the SSRN's 2."""
    g = torch.Generator().manual_seed(stride)
    prog = _random_program(57, 24, 40, kernel=kernel, stride=stride, generator=g).to(dtype=torch.float64)
    x = torch.randn(5, 57, generator=g, dtype=torch.float64)
    ref = spectral_stage_reference(x, prog)
    assert ref.abs().max() > 0.1
    assert ((_replay_pair_schedule(x, prog) - ref).abs().max() / ref.abs().max()).item() < 1e-12


def test_pair_replay_fails_when_the_identity_is_read_after_it_is_overwritten() -> None:
    """The replay can tell: with the blocks' epilogues first-to-last (block 0's writes X_1 before block 1 reads
    its identity from the same slots), it no longer equals the reference."""
    g = torch.Generator().manual_seed(5)
    prog = _random_program(60, 24, 40, blocks=2, generator=g).to(dtype=torch.float64)
    x = torch.randn(5, 60, generator=g, dtype=torch.float64)
    ref = spectral_stage_reference(x, prog)
    assert ((_replay_pair_schedule(x, prog, last_block_first=False) - ref).abs().max() / ref.abs().max()).item() > 1e-3


def test_gluon_kernel_compiles_for_hopper_sm90() -> None:
    """Offline (the Triton wheel's ptxas): the tensor cores read every tap from shared memory in wgmmas that
    are waited on twice per band position, within an SM's shared memory."""
    pytest.importorskip("triton")
    from kernels import spectral_gluon as sg
    from kernels.offline import compile_gluon

    if sg.GLUON_ERROR is not None:
        pytest.skip(f"no Gluon here: {sg.GLUON_ERROR}")
    k = compile_gluon(waits="phase")
    ptx = k.asm["ptx"]
    assert ptx.count("wgmma.mma_async") >= 2 * 2 * 7, "the convs did not lower to wgmma"
    assert ptx.count("wgmma.wait_group") == 2, "expected one wait per phase"
    assert "st.local" not in ptx
    prog = _random_program(200, 24, 128, generator=torch.Generator().manual_seed(0))
    assert k.metadata.shared == sg.shared_bytes(prog, step="one")
    assert k.metadata.shared <= sg.SHARED_LIMIT


@pytest.mark.parametrize("identity", ["epilogue", "mma"])
@pytest.mark.parametrize("waits", ["layer", "stem_last"])
@pytest.mark.parametrize("blocks,kernel", [(2, 7), (1, 3)])
def test_gluon_layer_waits_wait_for_one_layer_at_a_time(blocks: int, kernel: int, waits: str, identity: str) -> None:
    """Offline: the per-layer forms wait for one layer's wgmmas at a time, in issue order, and every wgmma is
    complete when a step ends. ``layer``: phase A waits for the stem with every block's conv2 in flight
    (NB x KT groups), then for each block's conv2. ``stem_last``: phase A issues the blocks last-first and the
    stem last, and waits for each block with the stem in flight, then for the stem. Phase B (both): each
    block's conv1 with the reduce in flight (one group), then the reduce. Same wgmmas and shared memory as the
    one-wait-per-phase form, and nothing that makes ptxas serialize the wgmmas."""
    pytest.importorskip("triton")
    import re

    from kernels import spectral_gluon as sg
    from kernels.offline import compile_gluon, ptxas_report

    if sg.GLUON_ERROR is not None:
        pytest.skip(f"no Gluon here: {sg.GLUON_ERROR}")
    prog = _random_program(200, 24, 128, blocks=blocks, kernel=kernel, generator=torch.Generator().manual_seed(0))
    split, phase = (compile_gluon(program=prog, waits=w, identity=identity, step="one") for w in (waits, "phase"))
    got = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", split.asm["ptx"])]
    nb, kt = blocks, kernel
    ka = kt + (identity == "mma")  # conv2's wgmma groups: its taps (+ the identity)
    if waits == "layer":
        phase_a = [nb * ka] + [(nb - 1 - b) * ka for b in range(nb)]
    else:
        phase_a = [b * ka + 1 for b in reversed(range(nb))] + [0]
    assert got == phase_a + [(nb - 1 - b) * kt + 1 for b in range(nb)] + [0]
    for op in ("wgmma.mma_async", "wgmma.commit_group"):
        assert split.asm["ptx"].count(op) == phase.asm["ptx"].count(op), op
    assert split.metadata.shared == phase.metadata.shared == sg.shared_bytes(prog, identity, step="one")
    if identity == "mma":  # the identity comes from the ring through the tensor cores, not an epilogue load
        assert "ldmatrix" not in split.asm["ptx"]
    assert "st.local" not in split.asm["ptx"]
    # ptxas serializes every wgmma of a kernel (C7515) when a register a wgmma still in flight defines or reads is
    # touched: the first per-layer form, which kept the reduce in flight into the next step, ran 1.38x slower
    # than the phase form on an H200 for that reason (benchmarks/results/kernels-h200.md, run 5)
    for k in (split, phase):
        report = ptxas_report(k.asm["ptx"])
        if report is None:
            pytest.skip("no ptxas in this Triton")
        assert "C7515" not in report and "C7517" not in report, report


def _fits_and_not_serialized(k, prog, step: str) -> None:
    """A compiled form's shared memory is its tiles' bytes (plus at most the alignment of tiles narrower than a
    swizzle pattern) within an SM's, and ptxas neither serialized its wgmmas (C7515) nor injected a wait (C7517)."""
    from kernels import spectral_gluon as sg
    from kernels.offline import ptxas_report

    assert 0 <= k.metadata.shared - sg.shared_bytes(prog, step=step) < 1024
    assert k.metadata.shared <= sg.SHARED_LIMIT
    report = ptxas_report(k.asm["ptx"])
    if report is None:
        pytest.skip("no ptxas in this Triton")
    assert "C7515" not in report and "C7517" not in report, report


def _compiled_offline(width: int, features: int, blocks: int, kernel: int, **form):
    """A random 200-band program of that shape and the Gluon kernel in ``form`` compiled for sm_90 (skips where
    this Triton has no Gluon)."""
    pytest.importorskip("triton")
    from kernels import spectral_gluon as sg
    from kernels.offline import compile_gluon

    if sg.GLUON_ERROR is not None:
        pytest.skip(f"no Gluon here: {sg.GLUON_ERROR}")
    prog = _random_program(200, width, features, blocks=blocks, kernel=kernel,
                           generator=torch.Generator().manual_seed(0))
    return prog, compile_gluon(program=prog, **form)


@pytest.mark.parametrize("width,features,blocks,kernel", [(24, 128, 2, 7), (16, 128, 2, 7), (24, 32, 1, 3),
                                                            (12, 20, 1, 5)])
def test_gluon_pair_compiles_for_hopper_sm90(width: int, features: int, blocks: int, kernel: int) -> None:
    """Offline: step='pair' issues, per step, KT + 1 wgmmas per conv (N = 2 x width: two tap tiles stacked), one
    for the stem's pair and two for the reduce; phase A waits for each block's conv2 (last block first) with the
    stem in flight, then for the stem; phase B for each block's conv1 with the reduce's two in flight, then the
    reduce. Nothing makes ptxas serialize the wgmmas, and it fits an SM's shared memory."""
    import re

    from kernels.offline import sass_loop

    prog, k = _compiled_offline(width, features, blocks, kernel, step="pair")
    ptx = k.asm["ptx"]
    nb, g = blocks, kernel + 1
    assert ptx.count("wgmma.mma_async") == 2 * nb * g * (_next_pow2(width) // 16) + 1 + 2 * (_next_pow2(width) // 16)
    assert f"m64n{2 * _next_pow2(width)}k16" in ptx, "the convs' wgmmas are not two positions wide"
    got = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    assert got == [(nb - 1 - i) * g + 1 for i in range(nb)] + [0] + [(nb - 1 - b) * g + 2 for b in range(nb)] + [0]
    loop = sass_loop(k.asm["cubin"])  # every wgmma sits in the band loop
    assert loop is None or loop["HGMMA"] == ptx.count("wgmma.mma_async")
    _fits_and_not_serialized(k, prog, "pair")


@pytest.mark.parametrize("width,features,blocks,kernel", [(24, 128, 2, 7), (16, 128, 2, 7), (24, 32, 1, 3),
                                                            (12, 20, 3, 5)])
def test_gluon_ws_compiles_for_hopper_sm90(width: int, features: int, blocks: int, kernel: int) -> None:
    """Offline: step='ws' is two warpgroups (the second with its own register budget) that issue, between them,
    the one-position kernel's wgmmas: A waits for each block's conv2 (last block first) with the stem in flight,
    then the stem; B for each block's conv1 with the reduce in flight, then the reduce. They hand steps over
    through mbarriers (a phase-parity wait, an arrive after a barrier of the arriving warpgroup's 128 threads),
    nothing makes ptxas serialize the wgmmas, and it fits an SM's shared memory."""
    import re

    from kernels import spectral_gluon as sg
    from kernels.offline import compile_gluon

    prog, k = _compiled_offline(width, features, blocks, kernel, step="ws")
    one = compile_gluon(program=prog, step="one")
    ptx, nb, kt = k.asm["ptx"], blocks, kernel
    assert ptx.count("wgmma.mma_async") == one.asm["ptx"].count("wgmma.mma_async")
    got = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    assert sorted(got) == sorted([(nb - 1 - i) * kt + 1 for i in range(nb)] + [0] * 2
                                 + [(nb - 1 - b) * kt + 1 for b in range(nb)])
    assert ptx.count("mbarrier.try_wait.parity") == 2 and ptx.count("mbarrier.arrive") == 2
    # each warpgroup's step: wait for the other's hand-over, issue, wait for every wgmma, make its shared-memory
    # writes visible to the tensor cores (fence), wait for its own 128 threads, then hand over
    for wait_at in (m.start() for m in re.finditer(r"mbarrier\.try_wait\.parity", ptx)):
        step = ptx[wait_at:ptx.index("mbarrier.arrive", wait_at)]
        assert "wgmma.mma_async" in step
        tail = step[step.rindex("wgmma.wait_group.sync.aligned 0"):]
        assert re.search(r"fence\.proxy\.async[^\n]*\n(.*\n)*?\s*bar\.sync\s+\d+, 128;", tail), tail[-600:]
    ids = {int(n) for n in re.findall(r"bar\.sync\s+(\d+), 128;", ptx)}
    assert len(ids) >= 2, f"the warpgroups share a barrier: {ids}"
    assert f"setmaxnreg.dec.sync.aligned.u32 \t{sg.WS_WORKER_REGS}" in ptx
    _fits_and_not_serialized(k, prog, "ws")


@pytest.mark.parametrize("width,features,blocks,kernel", [(16, 128, 2, 7), (24, 32, 2, 7), (12, 20, 1, 3)])
def test_gluon_kernel_compiles_for_narrow_shapes(width: int, features: int, blocks: int, kernel: int) -> None:
    """Rows narrower than 32 elements take a narrower shared-memory swizzle (a fixed one does not compile)."""
    from kernels import spectral_gluon as sg

    prog, k = _compiled_offline(width, features, blocks, kernel, step="one")
    assert "wgmma.mma_async" in k.asm["ptx"]
    assert k.metadata.shared == sg.shared_bytes(prog, step="one")


@pytest.mark.parametrize("waits,step", [("layer", "one"), ("stem_last", "one"), ("phase", "one"), ("layer", "pair"),
                                        ("layer", "ws")])
def test_gluon_traced_build_reads_the_clock_at_every_point_and_the_plain_build_never(waits: str, step: str) -> None:
    """Offline: the TRACE build reads the SM's cycle counter at each of TRACE_POINTS of a step (and at the
    program's start and end), issues the same wgmmas with the same waits, and stays free of serialized wgmmas;
    the plain build holds no trace code at all."""
    import re

    from kernels import spectral_gluon as sg
    from kernels.offline import compile_gluon, ptxas_report

    prog, plain = _compiled_offline(24, 128, 2, 7, waits=waits, step=step)
    traced = compile_gluon(program=prog, waits=waits, step=step, trace=True)
    p, t = plain.asm["ptx"], traced.asm["ptx"]
    assert "%clock64" not in p and "%globaltimer" not in p
    assert t.count("%clock64") == sg.TRACE_WIDTH + 2 and t.count("%globaltimer") == 2 and "%smid" in t
    waits_of = [re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", s) for s in (p, t)]
    assert waits_of[0] == waits_of[1] and p.count("wgmma.mma_async") == t.count("wgmma.mma_async")
    # the same tiles; step='ws' passes its worker partition's arguments through shared memory, and only the
    # traced build passes the trace pointer (8 B, 16 with the alignment)
    assert plain.metadata.shared <= traced.metadata.shared <= plain.metadata.shared + (16 if step == "ws" else 0)
    report = ptxas_report(t)
    if report is None:
        pytest.skip("no ptxas in this Triton")
    assert "C7515" not in report and "C7517" not in report, report


def test_trace_steps_and_executed_flops_match_the_kernels_arithmetic() -> None:
    """benchmarks/gluon_trace.py's ideal cycles rest on the wgmmas a step executes: over trace_steps steps they
    add up to the 3,694,080 (one position per step) and 4,260,864 (two) multiply-adds per pixel of the paper's
    200-band network worked out in benchmarks/results/kernels-h200.md; step='ws' runs the one-position step's
    wgmmas over two more steps (blocks KT + 1 apart)."""
    pytest.importorskip("triton")
    from benchmarks.gluon_trace import executed_flops_per_step
    from kernels import spectral_gluon as sg

    if sg.GLUON_ERROR is not None:
        pytest.skip(f"no Gluon here: {sg.GLUON_ERROR}")
    prog = _random_program(200, 24, 128, generator=torch.Generator().manual_seed(0))
    assert sg.trace_steps(prog, "one") == 97 + 2 * 7 and sg.trace_steps(prog, "pair") == 49 + 8
    assert sg.trace_steps(prog, "ws") == 97 + 2 * 8
    for step, macs in (("one", 3_694_080), ("pair", 4_260_864), ("ws", 33_280 * 113)):
        assert executed_flops_per_step(prog, step) * sg.trace_steps(prog, step) == 2 * 64 * macs


def test_gluon_identity_mma_needs_blocks_without_a_conv2_relu() -> None:
    """identity='mma' adds the identity inside conv2's sum: refused, by name, for blocks with a ReLU after conv2
    (it would then be added before that ReLU); the SSRN's blocks have none."""
    from kernels import spectral_gluon as sg
    from kernels.spectral import _pack

    relu2 = _random_program(31, 8, 16, conv2_relu=True, generator=torch.Generator().manual_seed(0))
    ssrn = _random_program(31, 8, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="identity='epilogue'"):
        sg._layout_constants(_pack(relu2, torch.device("cpu"), torch.bfloat16)["meta"], "layer", "mma")
    assert sg._layout_constants(_pack(ssrn, torch.device("cpu"), torch.bfloat16)["meta"], "layer", "mma")["ID_MMA"]
    with pytest.raises(ValueError, match="identity must be one of"):
        sg.spectral_stage_gluon(torch.zeros(2, 31, dtype=torch.bfloat16), ssrn, identity="registers")


def test_gluon_shared_memory_guard() -> None:
    """A program whose rings and weights exceed an SM's shared memory is refused before launch, by name."""
    from kernels.spectral_gluon import GLUON_ERROR, SHARED_LIMIT, shared_bytes, spectral_stage_gluon

    default = _random_program(200, 24, 128, generator=torch.Generator().manual_seed(0))
    three = _random_program(200, 24, 128, blocks=3, generator=torch.Generator().manual_seed(0))
    assert shared_bytes(default, step="one") <= SHARED_LIMIT < shared_bytes(three, step="one")
    assert shared_bytes(default, step="pair") <= SHARED_LIMIT < shared_bytes(three, step="pair")
    assert shared_bytes(default, step="ws") <= SHARED_LIMIT < shared_bytes(three, step="ws")
    if GLUON_ERROR is None:
        with pytest.raises(NotImplementedError, match="shared memory"):
            spectral_stage_gluon(torch.zeros(2, 200, dtype=torch.bfloat16), three)
        with pytest.raises(NotImplementedError, match="step='pair'.*shared memory"):
            spectral_stage_gluon(torch.zeros(2, 200, dtype=torch.bfloat16), three, step="pair")


def test_gluon_wrapper_errors() -> None:
    from kernels.spectral_gluon import GLUON_ERROR, spectral_stage_gluon, traced_run

    if GLUON_ERROR is not None:
        with pytest.raises(RuntimeError, match="Gluon"):
            spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), _random_program(23))
        return
    paper = _random_program(23, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        spectral_stage_gluon(torch.zeros(2, 23), paper)
    with pytest.raises(ValueError, match=r"expected pixels \(P, 23\)"):
        spectral_stage_gluon(torch.zeros(2, 22, dtype=torch.bfloat16), paper)
    seed = _random_program(23, form="seed", stage_norms=1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NotImplementedError, match="paper's block form"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), seed)
    with pytest.raises(NotImplementedError, match="at least one residual block"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), _random_program(23, blocks=0))
    with pytest.raises(ValueError, match="CUDA"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), paper)
    with pytest.raises(ValueError, match="CUDA"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), paper, step="pair")
    with pytest.raises(ValueError, match="step must be one of"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), paper, step="two")
    with pytest.raises(ValueError, match="waits='layer'"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), paper, step="pair", waits="phase")
    with pytest.raises(ValueError, match="step='ws' waits per layer"):
        spectral_stage_gluon(torch.zeros(2, 23, dtype=torch.bfloat16), paper, step="ws", identity="mma")
    with pytest.raises(ValueError, match="trace step='ws'"):
        traced_run(torch.zeros(2, 23, dtype=torch.bfloat16), paper, step="wsp")


def _hopper() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs a Hopper GPU (compute capability 9.0)")


@pytest.mark.gpu
@pytest.mark.parametrize("waits,identity,step", [("phase", "epilogue", "one"), ("layer", "epilogue", "one"),
                                                 ("stem_last", "epilogue", "one"), ("layer", "mma", "one"),
                                                 ("stem_last", "mma", "one"), ("layer", "epilogue", "pair"),
                                                 ("layer", "epilogue", "ws"), ("layer", "epilogue", "wsp")])
@pytest.mark.parametrize("bands", [103, 200, 224])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gluon_matches_reference(bands: int, dtype: torch.dtype, waits: str, identity: str, step: str) -> None:
    """103 / 200 / 224 bands: 49 / 97 / 109 band positions (an odd count: the pair form's last pair is half
    padding)."""
    _hopper()
    from kernels.spectral_gluon import spectral_stage_gluon

    g = torch.Generator().manual_seed(bands)
    prog = _random_program(bands, 24, 128, generator=g).to("cuda")
    x64 = torch.randn(10_007, bands, generator=g, dtype=torch.float64).cuda()
    ref = spectral_stage_reference(x64, prog.to(dtype=torch.float64))
    x = x64.to(dtype)
    out = spectral_stage_gluon(x, prog, waits=waits, identity=identity, step=step)
    plain = spectral_stage_reference(x, prog.to(dtype=dtype))
    scale = ref.abs().max().item()
    err, torch_err = (out.double() - ref).abs().max().item(), (plain.double() - ref).abs().max().item()
    assert torch.isfinite(out).all()
    assert err <= min(2 * torch_err + 1e-3 * scale, 1e-2 * scale), (err, torch_err, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("step", ["pair", "ws", "wsp"])
@pytest.mark.parametrize("blocks,kernel", [(1, 1), (2, 1), (1, 3), (2, 3), (1, 7), (2, 5), (3, 3)])
def test_gpu_gluon_small_programs(blocks: int, kernel: int, step: str) -> None:
    """step='pair', 'ws' and 'wsp' on small programs, so that a wrong result says where: kernel 1 (one tap: the
    pair form's stacked tiles are [W_0; 0] and [0; W_0]), one block (no X_1 ring), rings wider than KT + 1
    (kernel 5), three blocks (ws: three hand-overs per step in flight); wsp on 40,003 pixels, 626 blocks of
    64, several per program on any GPU (one program per SM), the last one partial."""
    _hopper()
    from kernels.spectral_gluon import spectral_stage_gluon

    g = torch.Generator().manual_seed(blocks * 10 + kernel)
    prog = _random_program(41, 24, 128, blocks=blocks, kernel=kernel, generator=g).to("cuda")
    x64 = torch.randn(40_003 if step == "wsp" else 777, 41, generator=g, dtype=torch.float64).cuda()
    ref = spectral_stage_reference(x64, prog.to(dtype=torch.float64))
    x = x64.to(torch.bfloat16)
    out = spectral_stage_gluon(x, prog, step=step)
    plain = spectral_stage_reference(x, prog.to(dtype=torch.bfloat16))
    scale = ref.abs().max().item()
    err, torch_err = (out.double() - ref).abs().max().item(), (plain.double() - ref).abs().max().item()
    assert err <= min(2 * torch_err + 1e-3 * scale, 1e-2 * scale), (err, torch_err, scale)


def test_gluon_unsupported_says_why() -> None:
    """The triton backend asks this before every bf16 / fp16 call: a reason (never an exception) wherever the
    Gluon kernel cannot run, so the Triton kernel takes over."""
    from kernels.spectral_gluon import GLUON_ERROR, gluon_unsupported

    paper = _random_program(23, generator=torch.Generator().manual_seed(0))
    seed = _random_program(23, form="seed", stage_norms=1, generator=torch.Generator().manual_seed(0))
    cases = {"CUDA": (torch.zeros(2, 23, dtype=torch.bfloat16), paper),
             "bfloat16 or float16": (torch.zeros(2, 23), paper),
             "paper's block form": (torch.zeros(2, 23, dtype=torch.bfloat16), seed)}
    for expected, (x, prog) in cases.items():
        why = gluon_unsupported(x, prog)
        assert why is not None and (expected in why if GLUON_ERROR is None else "Gluon" in why), why


@pytest.mark.gpu
@pytest.mark.parametrize("step", ["one", "pair", "ws"])
def test_gpu_traced_run_gives_the_same_bits_and_ordered_timestamps(step: str) -> None:
    """The traced build computes what the plain one does, and every program's timestamps rise through each step
    (a point's clock read moved past the next would show as a step that goes back in time)."""
    _hopper()
    from kernels.spectral_gluon import spectral_stage_gluon, trace_steps, traced_run

    g = torch.Generator().manual_seed(8)
    x = torch.randn(1_001, 200, generator=g).to("cuda", torch.bfloat16)
    prog = _random_program(200, 24, 128, generator=g).to("cuda")
    out, trace = traced_run(x, prog, step=step)
    assert torch.equal(out, spectral_stage_gluon(x, prog, step=step))
    t = trace.cpu()
    assert t.shape == (16, trace_steps(prog, step) + 1, 8)
    # step='ws': each warpgroup keeps its own points (A's in columns 0-3, B's in 4-7), concurrent with the other's
    groups = (slice(0, 4), slice(4, 8)) if step == "ws" else (slice(0, 8),)
    for cols in groups:
        steps = t[:, :-1, cols].reshape(16, -1)
        assert bool((steps.diff(dim=1) >= 0).all()), (cols, steps.diff(dim=1).min())
    assert bool((t[:, -1, 2] > t[:, -1, 0]).all())


@pytest.mark.gpu
def test_gpu_triton_backend_runs_gluon_on_hopper(monkeypatch) -> None:
    """backend='triton' in bf16 on Hopper runs the Gluon kernel for the paper's block form (after its check on
    the first pixels), and the Triton kernel for a form Gluon does not cover."""
    _hopper()
    from kernels import dispatch
    from kernels.spectral import spectral_stage_triton
    from kernels.spectral_gluon import spectral_stage_gluon

    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    stage = dispatch.get_spectral_stage("triton", "cuda", torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3_001, 200, generator=g).to("cuda", torch.bfloat16)
    paper = _random_program(200, 24, 128, generator=g).to("cuda")
    assert torch.equal(stage(x, paper), spectral_stage_gluon(x, paper))
    assert list(dispatch._GLUON_CHECKED.values()) == [""]
    seed = _random_program(200, 24, 128, form="seed", stage_norms=1, generator=g).to("cuda")
    assert torch.equal(stage(x, seed), spectral_stage_triton(x, seed))


@pytest.mark.parametrize("step", ["pair", "ws"])
def test_dispatch_tries_the_default_gluon_form_then_the_one_position_forms(monkeypatch, step: str) -> None:
    """The triton backend's chain of Gluon forms: the default, the default waits one position per step, the
    one-wait-per-phase form; with step='pair' or 'ws' made the default it comes first and the measured forms
    follow."""
    from kernels import dispatch, spectral_gluon

    monkeypatch.setattr(spectral_gluon, "DEFAULT_STEP", step)
    assert dispatch._gluon_forms() == [("layer", step), ("layer", "one"), ("phase", "one")]
    monkeypatch.setattr(spectral_gluon, "DEFAULT_STEP", "one")
    assert dispatch._gluon_forms() == [("layer", "one"), ("phase", "one")]
    monkeypatch.setattr(spectral_gluon, "DEFAULT_STEP", "wsp")  # then ws: the same step, one block a program
    assert dispatch._gluon_forms() == [("layer", "wsp"), ("layer", "ws"), ("layer", "one"), ("phase", "one")]


def test_dispatch_skips_a_default_form_the_program_does_not_fit_without_a_warning(monkeypatch, caplog) -> None:
    """A program the default two-warpgroup form cannot hold (its shared memory) but the one-position form can runs
    the one-position form, checked against the reference, and logs no warning: nothing is wrong."""
    from kernels import dispatch, spectral_gluon

    checked = []
    monkeypatch.setattr(spectral_gluon, "DEFAULT_STEP", "ws")
    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    monkeypatch.setattr(dispatch, "_GLUON_FORM", {})
    monkeypatch.setattr(spectral_gluon, "gluon_unsupported",
                        lambda x, p, step=None: "would need more shared memory" if step == "ws" else None)
    monkeypatch.setattr(dispatch, "_gluon_disagrees", lambda x, p, **kw: checked.append(kw) or "")
    monkeypatch.setattr(spectral_gluon, "_run", lambda x, p, *, waits, step: torch.full((x.shape[0], 3), 7.0))
    prog = _random_program(23, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="kernels.dispatch"):
        out = dispatch.fused_stage(torch.zeros(5, 23, dtype=torch.bfloat16), prog)
    assert checked == [{"waits": "layer", "step": "one"}]
    assert list(dispatch._GLUON_FORM.values()) == [("layer", "one")] and out.shape == (5, 3)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("step", ["pair", "ws", "wsp"])
def test_gpu_triton_backend_runs_the_default_step(monkeypatch, step: str) -> None:
    """With step='pair', 'ws' or 'wsp' the default, the backend checks it once and runs it (same numbers as calling it)."""
    _hopper()
    from kernels import dispatch, spectral_gluon

    monkeypatch.setattr(spectral_gluon, "DEFAULT_STEP", step)
    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    monkeypatch.setattr(dispatch, "_GLUON_FORM", {})
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3_001, 200, generator=g).to("cuda", torch.bfloat16)
    prog = _random_program(200, 24, 128, generator=g).to("cuda")
    out = dispatch.fused_stage(x, prog)
    assert list(dispatch._GLUON_FORM.values()) == [("layer", step)]
    assert torch.equal(out, spectral_gluon.spectral_stage_gluon(x, prog, step=step))


@pytest.mark.gpu
def test_gpu_gluon_that_computes_wrong_numbers_is_not_used(monkeypatch, caplog) -> None:
    """A Gluon kernel that runs but computes wrong numbers (a miscompile on a Triton it never ran on) is caught by
    the once-per-shape check: the Triton kernel's numbers are returned, with one warning."""
    _hopper()
    from kernels import dispatch, spectral_gluon
    from kernels.spectral import spectral_stage_triton

    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    monkeypatch.setattr(spectral_gluon, "spectral_stage_gluon",
                        lambda x, p, **kw: torch.ones(x.shape[0], p.out_features, device=x.device, dtype=x.dtype))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1_001, 103, generator=g).to("cuda", torch.bfloat16)
    prog = _random_program(103, 24, 128, generator=g).to("cuda")
    with caplog.at_level("WARNING", logger="kernels.dispatch"):
        out = dispatch.fused_stage(x, prog)
    assert torch.equal(out, spectral_stage_triton(x, prog))
    assert "differs from the reference" in caplog.text and "waits='phase'" in caplog.text
    assert f"step={spectral_gluon.DEFAULT_STEP!r}" in caplog.text
    assert all(dispatch._GLUON_CHECKED.values())


@pytest.mark.gpu
def test_gpu_gluon_default_form_wrong_falls_back_to_the_phase_form(monkeypatch, caplog) -> None:
    """When only the default (per-layer) form computes wrong numbers, the backend runs the one-wait-per-phase form."""
    _hopper()
    from kernels import dispatch, spectral_gluon

    real = spectral_gluon.spectral_stage_gluon

    def broken(x, p, *, waits=spectral_gluon.DEFAULT_WAITS, **kw):
        if waits != "phase":
            return torch.zeros(x.shape[0], p.out_features, device=x.device, dtype=x.dtype)
        return real(x, p, waits="phase", **kw)

    monkeypatch.setattr(dispatch, "_GLUON_CHECKED", {})
    monkeypatch.setattr(dispatch, "_GLUON_FORM", {})
    monkeypatch.setattr(spectral_gluon, "spectral_stage_gluon", broken)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1_001, 103, generator=g).to("cuda", torch.bfloat16)
    prog = _random_program(103, 24, 128, generator=g).to("cuda")
    with caplog.at_level("WARNING", logger="kernels.dispatch"):
        out = dispatch.fused_stage(x, prog)
    assert torch.equal(out, real(x, prog, waits="phase"))
    assert list(dispatch._GLUON_FORM.values()) == [("phase", "one")] and "one-wait-per-phase form" in caplog.text


def test_the_default_step_falls_back_to_one_position_where_ws_does_not_fit() -> None:
    """step='ws' needs one more tile of shared memory than 'one': a program at the edge of an SM's memory (width 16,
    3 blocks of kernel 9, 64 features) was refused by spectral_stage_gluon's default where 'one' fits; the
    default is now 'one' for it, and 'ws' wherever 'ws' fits."""
    from kernels import spectral_gluon as sg

    edge = _random_program(200, 16, 64, blocks=3, kernel=9, generator=torch.Generator().manual_seed(0))
    assert sg.shared_bytes(edge, step="one") <= sg.SHARED_LIMIT < sg.shared_bytes(edge, step="ws")
    assert sg._resolve_step("layer", "epilogue", None, edge) == "one"
    default = _random_program(200, 24, 128, generator=torch.Generator().manual_seed(0))
    assert sg._resolve_step("layer", "epilogue", None, default) == sg.DEFAULT_STEP
    assert sg._resolve_step("layer", "epilogue", "ws", edge) == "ws"  # asked for: refused by its check, by name
    why = sg.gluon_unsupported(torch.zeros(2, 200, dtype=torch.bfloat16), edge)
    assert why is not None and "shared memory" not in why  # refused for this CPU tensor, not for its memory


def test_the_check_of_the_persistent_form_runs_several_blocks_per_program(monkeypatch) -> None:
    """The once-per-shape check runs 1,024 pixels: 16 blocks, one per program on a GPU of 132 SMs, so wsp's
    stream across blocks (the gaps, the reduce's reset, the output rows of later blocks) went unchecked. wsp's check
    now runs on two programs."""
    from kernels import dispatch, spectral_gluon

    seen = {}

    def record(x, p, **kw):
        seen[kw["step"]] = kw.get("programs")
        return spectral_stage_reference(x.float(), p.to(dtype=torch.float32))

    monkeypatch.setattr(spectral_gluon, "spectral_stage_gluon", record)
    prog = _random_program(23, generator=torch.Generator().manual_seed(0))
    x = torch.randn(700, 23, generator=torch.Generator().manual_seed(1))
    for step in ("wsp", "ws"):
        assert dispatch._gluon_disagrees(x, prog, step=step) == ""
    assert seen == {"wsp": 2, "ws": None}
