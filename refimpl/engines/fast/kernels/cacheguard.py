"""Invalidate numba's on-disk cache of this package when any of its sources
change.  numba only checks the source file of each cached function itself, so
an edit to e.g. common.py (inlined into the kernels of avx512.py) would
otherwise leave stale machine code in the cache.  Cheap: hashes ~15 small files
at import, deletes only this package's *.nbi/*.nbc files on a mismatch.
"""

import glob
import hashlib
import os

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def source_hash():
    h = hashlib.sha1()
    try:
        import llvmlite
        import numba

        h.update(("%s %s" % (numba.__version__, llvmlite.__version__)).encode())
    except Exception:  # pragma: no cover
        pass
    for f in sorted(glob.glob(os.path.join(_PKG_DIR, "*.py"))):
        with open(f, "rb") as fh:
            h.update(os.path.basename(f).encode())
            h.update(fh.read())
    return h.hexdigest()


def check(cache_dir):
    """Ensure ``cache_dir`` holds numba cache files of the current sources."""
    if not cache_dir or not os.path.isdir(cache_dir):
        return False
    stamp = os.path.join(cache_dir, "refimpl-kernels-sources.sha1")
    cur = source_hash()
    try:
        with open(stamp) as fh:
            if fh.read().strip() == cur:
                return False
    except OSError:
        pass
    mods = [os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(_PKG_DIR, "*.py"))]
    removed = 0
    for m in mods:
        for f in glob.glob(os.path.join(cache_dir, m + ".*.nb[ic]")):
            try:
                os.remove(f)
                removed += 1
            except OSError:
                pass
    try:
        with open(stamp, "w") as fh:
            fh.write(cur + "\n")
    except OSError:
        pass
    return removed > 0


def run():
    try:
        from refimpl.engines.fast.kernels.common import quantize_rows_serial  # any cached dispatcher of the package

        path = quantize_rows_serial._cache._cache_path
    except Exception:  # pragma: no cover - numba internals moved
        return False
    return check(path)
