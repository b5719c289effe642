"""The AMX path: bfloat16 weights multiplied on the CPU's tile units (Intel Sapphire Rapids and
later), where one instruction does a (16 x 32) by (32 x 16) product.

Weights are the dot-product path's pairs (bfloat16.py): panel word [m, c] holds the weights of
inputs 2m and 2m+1 for column c, which is AMX's own layout for the right-hand tile ("VNNI"). A
tile of weights is 16 rows of pairs by 16 columns of one panel (a 64-byte slice of 16 panel
rows); the operand's tile is up to 16 batch rows by 16 pairs. Tiled weights come as int32 (the
same bits as the uint32 pairs), their pairs padded with zeros to a multiple of 16
(TILE_PAIRS): their type tells `matvec` to take this path, and no tile reads past a panel.

Each sum runs over k in order, one tile instruction per 32 inputs, the same whatever batch
position or thread computes a row. Inputs and states are rounded to bfloat16 where multiplied,
as on the dot-product path; sums, states, gates and outputs are float32.

Linux gives a process the tile registers only once it asks (arch_prctl); cpu.AMX is True only
where the CPU has AMX-BF16 and the request was granted, and only then is this path taken.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches

TILE_ROWS = 16   # batch rows of an operand tile, pairs of a weight tile
TILE_PAIRS = 16  # input pairs per tile instruction (64 bytes of an operand row)


def _asm(builder, text, *operands):
    """Inline assembly with side effects on memory, operands in registers ($0, $1, ...)."""
    i64 = ir.IntType(64)
    function = ir.FunctionType(ir.VoidType(), [i64] * len(operands))
    constraints = ",".join(["r"] * len(operands) + ["~{memory}"])
    builder.call(ir.InlineAsm(function, text, constraints, side_effect=True), list(operands))


@intrinsic
def tile_configure(typingctx, rows):
    """Load a tile configuration (ldtilecfg): tiles 0-4 hold `rows` rows (sums and the
    operand), 5-7 TILE_PAIRS rows (weights); every row 64 bytes."""
    if not isinstance(rows, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i8, i16 = ir.IntType(8), ir.IntType(16)
        config = cgutils.alloca_once(builder, ir.ArrayType(i8, 64))
        builder.store(ir.Constant(ir.ArrayType(i8, 64), None), config)
        base = builder.bitcast(config, i8.as_pointer())
        builder.store(ir.Constant(i8, 1), base)  # palette 1
        count = builder.trunc(args[0], i8)
        for tile in range(8):
            row_bytes = builder.bitcast(builder.gep(base, [ir.Constant(i16, 16 + 2 * tile)]),
                                        i16.as_pointer())
            builder.store(ir.Constant(i16, 64), row_bytes)
            tile_rows = count if tile < 5 else ir.Constant(i8, TILE_PAIRS)
            builder.store(tile_rows, builder.gep(base, [ir.Constant(i16, 48 + tile)]))
        _asm(builder, "ldtilecfg ($0)", builder.ptrtoint(base, ir.IntType(64)))
        return context.get_dummy_value()

    return types.none(rows), codegen


def _tile_number(tile) -> int | None:
    if isinstance(tile, types.IntegerLiteral) and 0 <= tile.literal_value < 8:
        return tile.literal_value
    return None


@intrinsic(prefer_literal=True)
def tile_zero(typingctx, tile):
    """tmm[tile] = 0 (tile a constant)."""
    t = _tile_number(tile)
    if t is None:
        return None

    def codegen(context, builder, sig, args):
        _asm(builder, f"tilezero %tmm{t}")
        return context.get_dummy_value()

    return types.none(tile), codegen


def _tile_rows_instruction(name, assembly):
    """An intrinsic name(tile, address, stride) running `assembly`, an instruction that moves
    the rows of tmm{t} (t = tile, a constant) to or from address, address + stride, ... (bytes)."""

    def typer(typingctx, tile, address, stride):
        t = _tile_number(tile)
        if t is None or not (isinstance(address, types.Integer)
                             and isinstance(stride, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            _asm(builder, assembly.format(t=t), args[1], args[2])
            return context.get_dummy_value()

        return types.none(tile, address, stride), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(prefer_literal=True)(typer)


# tmm[tile] = the rows at address, address + stride, ...; and the reverse
tile_load = _tile_rows_instruction("tile_load", "tileloadd ($0,$1,1), %tmm{t}")
tile_store = _tile_rows_instruction("tile_store", "tilestored %tmm{t}, ($0,$1,1)")


@intrinsic(prefer_literal=True)
def tile_dot(typingctx, sums, operand, weights):
    """tmm[sums][m, n] += sum over pairs k of the bfloat16 dot product of tmm[operand][m, k] and
    tmm[weights][k, n] (tdpbf16ps)."""
    s, a, b = _tile_number(sums), _tile_number(operand), _tile_number(weights)
    if None in (s, a, b):
        return None

    def codegen(context, builder, sig, args):
        _asm(builder, f"tdpbf16ps %tmm{b}, %tmm{a}, %tmm{s}")
        return context.get_dummy_value()

    return types.none(sums, operand, weights), codegen


@njit(**JIT_OPTIONS)
def matvec_tiles(v, wp, out, b0, b1, p0, p1, backwards):
    """out[b, p*64 + c] = sum_m v[b, m] . wp[p, m, c] for rows b0 <= b < b1, panels p0 <= p < p1,
    from p1 down to p0 when `backwards` (see gru.matvec).

    v: (B, >= pairs) uint32 operand pairs, wp: (panels, pairs, 64) int32 weight pairs with pairs
    a multiple of TILE_PAIRS, out: (B, >= p1*64) float32 with contiguous rows. Blocks of up to
    16 rows; per block and panel, four 16 x 16 sum tiles (tiles 0-3) take one operand tile (4)
    and four weight tiles (5-7, 5 again) per 32 inputs.
    """
    pairs = wp.shape[1]
    operand_stride, panel_row, out_stride = v.strides[0], wp.strides[1], out.strides[0]
    configured = 0
    for m0 in range(b0, b1, TILE_ROWS):
        rows = min(TILE_ROWS, b1 - m0)
        if rows != configured:  # tile shapes are fixed by the configuration
            tile_configure(rows)
            configured = rows
        operand_row = v.ctypes.data + m0 * operand_stride
        for i in range(p1 - p0):
            p = p1 - 1 - i if backwards else p0 + i
            panel = wp.ctypes.data + p * wp.strides[0]
            tile_zero(0)
            tile_zero(1)
            tile_zero(2)
            tile_zero(3)
            for k in range(0, pairs, TILE_PAIRS):
                tile_load(4, operand_row + 4 * k, operand_stride)
                w = panel + k * panel_row
                tile_load(5, w, panel_row)
                tile_dot(0, 4, 5)
                tile_load(6, w + 64, panel_row)
                tile_dot(1, 4, 6)
                tile_load(7, w + 128, panel_row)
                tile_dot(2, 4, 7)
                tile_load(5, w + 192, panel_row)
                tile_dot(3, 4, 5)
            result = out.ctypes.data + m0 * out_stride + p * 64 * 4
            tile_store(0, result, out_stride)
            tile_store(1, result + 64, out_stride)
            tile_store(2, result + 128, out_stride)
            tile_store(3, result + 192, out_stride)


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
