"""One model shared by threads, bounded memory on a long stream, and Ctrl-C."""

from __future__ import annotations

import _thread
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.helpers import WORDS, random_sentences


def test_eight_threads_get_exactly_the_single_threaded_results(model):
    inputs = [random_sentences(40, seed) for seed in range(8)]
    expected = [model.encode(texts, batch_size=8) for texts in inputs]
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        return [model.encode(inputs[i], batch_size=8) for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, runs in enumerate(results):
        for run in runs:
            np.testing.assert_array_equal(run, expected[i])


def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def growth_while(consume) -> float:
    """RSS growth (MiB) while ``consume`` runs, sampled from a watcher thread."""
    baseline, peak, done = rss_mb(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        consume()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], rss_mb()) - baseline


def stream():
    return (f"{WORDS[i % len(WORDS)]} 문장 번호 {i}" for i in range(200_000))


def test_two_hundred_thousand_sentences_in_bounded_memory(model):
    """The generator API holds one chunk at a time: RSS does not grow with the stream's length.
    Encoding the same stream as one list must break the bound: the check can fail."""
    bound_mb = 20
    list(model.embed(random_sentences(2000), batch_size=64))  # warm-up: allocator pools, first calls
    count = []
    streamed = growth_while(lambda: count.extend(len(batch) for batch in model.embed(stream(), batch_size=256)))
    assert sum(count) == 200_000
    print(f"200,000 sentences through embed(): RSS growth {streamed:.1f} MiB (bound {bound_mb})")
    assert streamed < bound_mb
    at_once = growth_while(lambda: model.encode(list(stream()), batch_size=256))
    print(f"the same as one encode() call: RSS growth {at_once:.1f} MiB")
    assert at_once > bound_mb


def test_ctrl_c_leaves_the_model_usable(model):
    texts = random_sentences(30_000, seed=1)
    reference = model.encode(texts[:50])
    timer = threading.Timer(0.5, _thread.interrupt_main)  # what Ctrl-C does: KeyboardInterrupt in the main thread
    timer.start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model.encode(texts, batch_size=16)
    timer.cancel()
    assert time.perf_counter() - started < 20
    assert not model.pipeline.lock.locked()
    np.testing.assert_array_equal(model.encode(texts[:50]), reference)
