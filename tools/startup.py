"""Start-up time per compute mode: a fresh process imports refimpl, loads the model and embeds one sentence.

    python -m tools.startup                        # klue-shaped model, every mode, warm caches
    python -m tools.startup --model DIR --repeats 5

Each mode first runs once to fill the caches (numba's compiled kernels, the packed weights under
REFIMPL_CACHE or ~/.cache/refimpl), then ``--repeats`` fresh processes are timed: the wall time of
the child from its start to the first vector (interpreter start-up included), and the split it
reports (import, load, first encode). The median is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from tools.common import klue_model

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import refimpl
imported = time.perf_counter()
model = refimpl.SentenceTransformer(sys.argv[1], compute=sys.argv[2])
loaded = time.perf_counter()
model.encode(["첫 문장을 임베딩합니다."])
done = time.perf_counter()
print(json.dumps({"import": imported - start, "load": loaded - imported, "first_encode": done - loaded}))
"""


def run_once(model, mode):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), mode], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the bench's klue-shaped model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["float32", "int8", "bfloat16"])
    args = parser.parse_args()
    model = klue_model(args.model)
    print("| mode | process start to first vector, s | import | load | first encode |")
    print("|---|---|---|---|---|")
    for mode in args.modes:
        run_once(model, mode)  # fills the caches
        runs = [run_once(model, mode) for _ in range(args.repeats)]
        parts = {key: statistics.median(r[1][key] for r in runs) for key in ("import", "load", "first_encode")}
        wall = statistics.median(r[0] for r in runs)
        print(f"| {mode} | {wall:.2f} | {parts['import']:.2f} | {parts['load']:.2f} | {parts['first_encode']:.2f} |")


if __name__ == "__main__":
    main()
