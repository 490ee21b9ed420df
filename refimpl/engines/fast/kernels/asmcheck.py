"""Tiny x86 assembly inspector for the hot loops of the kernels.

``loops(asm)`` finds every backward branch ``jxx .LBBn_m`` whose target label
is above it and returns the instructions in between (the loop body, including
any inner blocks).  ``hot_loop(asm, pattern)`` returns the loop with the most
instructions matching ``pattern`` (e.g. ``vfmadd``); tests then assert that it
has no stack traffic (no ``(%rsp)``/``(%rbp)`` operands == no spills/reloads).
"""

import re

_LABEL = re.compile(r"^(\.?L[\w$.]+):")
_JUMP = re.compile(r"^\s+j\w+\s+(\.?L[\w$.]+)\s*$")


def _instructions(lines):
    out = []
    for ln in lines:
        s = ln.split("#", 1)[0].rstrip()
        if not s.strip() or s.lstrip().startswith(".") or _LABEL.match(s.strip()):
            continue
        out.append(s.strip())
    return out


def loops(asm):
    """All loops: dicts with label, start/end line numbers, instructions."""
    lines = asm.splitlines()
    where = {}
    for i, ln in enumerate(lines):
        m = _LABEL.match(ln.strip())
        if m:
            where[m.group(1)] = i
    res = []
    for i, ln in enumerate(lines):
        m = _JUMP.match(ln)
        if m and m.group(1) in where and where[m.group(1)] <= i:
            a = where[m.group(1)]
            res.append({"label": m.group(1), "start": a, "end": i, "instructions": _instructions(lines[a : i + 1])})
    return res


def innermost_loops(asm):
    """Loops that contain no other loop."""
    lps = loops(asm)
    out = []
    for lp in lps:
        inner = any(
            o is not lp
            and lp["start"] <= o["start"]
            and o["end"] <= lp["end"]
            and (o["start"], o["end"]) != (lp["start"], lp["end"])
            for o in lps
        )
        if not inner:
            out.append(lp)
    return out


def count(instrs, pattern):
    rx = re.compile(pattern)
    return sum(1 for s in instrs if rx.search(s))


# %rbp counts as the stack only in functions that set it up as a frame
# pointer; numba/LLVM normally omit the frame pointer and use %rbp freely.
_STACK = r"%rsp"


def set_frame_pointer(asm):
    global _STACK
    _STACK = r"%rsp|%rbp" if re.search(r"movq\s+%rsp,\s*%rbp", asm) else r"%rsp"


def stack_refs(instrs):
    """Instructions touching the stack frame (spills / reloads)."""
    return [s for s in instrs if re.search(r"\((%s)[),]" % _STACK, s)]


def stack_stores(instrs):
    """Stores to the stack frame (register spills)."""
    return [s for s in instrs if re.search(r",\s*-?\d*\((%s)[),]" % _STACK, s) and not s.startswith(("cmp", "test"))]


def memory_stores(instrs):
    """Stores to non-stack memory (the k loops have none: the tile is stored
    after the loop).  Spills go to the stack and are reported separately."""
    out = []
    for s in instrs:
        m = re.match(r"^v?mov\w*\s+%\w+,\s*(-?\w*\([^)]*\))", s)
        if m and not re.search(_STACK, m.group(1)):
            out.append(s)
    return out


def hot_loops(asm, pattern):
    """The k loops: innermost loops containing ``pattern`` and no stores to
    non-stack memory (one or more per microkernel variant; LLVM's block
    placement may put an outer loop's blocks around a peeled k step, such a
    region stores the tile and is excluded)."""
    set_frame_pointer(asm)
    res = []
    for lp in innermost_loops(asm):
        n = count(lp["instructions"], pattern)
        if n and not memory_stores(lp["instructions"]):
            lp = dict(lp)
            lp["matches"] = n
            lp["stack"] = stack_refs(lp["instructions"])
            lp["spills"] = stack_stores(lp["instructions"])
            res.append(lp)
    return res


def hot_loop(asm, pattern):
    """The innermost loop with the most ``pattern`` instructions."""
    hl = hot_loops(asm, pattern)
    return max(hl, key=lambda lp: lp["matches"]) if hl else None


def describe_loop(lp, pattern):
    ins = lp["instructions"]
    return "%s: %d instr, %d x %s, %d vector loads/broadcasts, %d stack refs, %d spills" % (
        lp["label"],
        len(ins),
        lp["matches"],
        pattern,
        count(ins, r"^v(mov|broadcast|pbroadcast)\w*\s+-?\w*\("),
        len(lp["stack"]),
        len(lp["spills"]),
    )


def summary(asm, pattern):
    hl = hot_loops(asm, pattern)
    if not hl:
        return "no loop with %r" % pattern
    return "\n".join(describe_loop(lp, pattern) for lp in hl)
