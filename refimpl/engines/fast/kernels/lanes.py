"""LLVM intrinsics numba does not expose: fused multiply-add and float32 <-> int32 bit casts.

``fma(a, b, c)`` is ``llvm.fma``: a*b + c with one rounding, whatever the fastmath flags of the
kernel it is inlined into (InstCombine/Reassociate never split or reorder it), and a vector
instruction on every AVX2+FMA host (vfmadd*ps/pd), so loops using it still vectorise. On a
CPU without FMA LLVM calls libm's fmaf: slow but bit-identical.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b and a == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.fma.f32" if isinstance(ty, ir.FloatType) else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def f32_from_bits(typingctx, i):
    """The float32 whose IEEE bits are the int32 ``i`` (any integer type is truncated to 32 bits)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32)) if v.type.width > 32 else builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of the float32 ``x`` as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def f64_from_bits(typingctx, i):
    """The float64 whose IEEE bits are the int64 ``i``."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 64:
            v = builder.sext(v, ir.IntType(64))
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(i), codegen


@intrinsic
def f64_bits(typingctx, x):
    """The IEEE bits of the float64 ``x`` as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def ld(typingctx, arr, i):
    """arr.flat[i] for a C-contiguous array: a plain load, no wraparound or bounds check (the
    caller guarantees 0 <= i < arr.size). Lets LLVM see consecutive addresses and vectorise."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.load(builder.gep(ary.data, [idx], inbounds=True))

    return arr.dtype(arr, i), codegen


@intrinsic
def st(typingctx, arr, i, value):
    """arr.flat[i] = value for a C-contiguous array, without checks (see ``ld``)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        val = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        builder.store(val, builder.gep(ary.data, [idx], inbounds=True))
        return context.get_dummy_value()

    return types.none(arr, i, value), codegen


@intrinsic
def atomic_add(typingctx, arr, i, value):
    """Atomically arr[i] += value for an int64 array; returns the old value (a shared work
    counter: threads take work items in turn, so a late or descheduled thread takes fewer)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        ptr = builder.gep(ary.data, [idx], inbounds=True)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, i, value), codegen
