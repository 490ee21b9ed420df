"""Dynamic batching: one queue, one worker, one packed forward pass at a time.

Requests put a ``Job`` (their packed token ids) in the queue. The worker, an asyncio task on
the event loop, takes from the head of the queue as many inputs as fit ``max_batch_tokens``
(a job may be split across passes; an input longer than the budget goes alone), all with the
same prompt_length, concatenates them into one ``Encoded`` and runs ``model.embed_batch`` on
it in a single forward thread, so the event loop stays free. Each job then gets its own rows.

A job whose request was cancelled (its client went away) is dropped from the queue before
any of its not-yet-started inputs reach a forward pass. All queue state lives on the event
loop thread; only ``embed_batch`` runs elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from refimpl.apps.serve import errors
from refimpl.batch import Encoded

logger = logging.getLogger("refimpl.serve")


class Job:
    def __init__(self, encoded: Encoded, prompt_length: int, future: asyncio.Future):
        self.encoded, self.prompt_length, self.future = encoded, prompt_length, future
        self.count = len(encoded.lengths)
        self.next = 0  # first input not yet taken into a forward pass
        self.done = 0
        self.rows: np.ndarray | None = None

    @property
    def cancelled(self) -> bool:
        return self.future.done()

    def deliver(self, start: int, rows: np.ndarray):
        if self.future.done():
            return
        if self.rows is None:
            self.rows = np.empty((self.count, rows.shape[1]), rows.dtype)
        self.rows[start : start + len(rows)] = rows
        self.done += len(rows)
        if self.done == self.count:
            self.future.set_result(self.rows)


class Batcher:
    def __init__(self, model, settings, metrics):
        self.model, self.settings, self.metrics = model, settings, metrics
        self.budget = settings.max_batch_tokens
        self.queue: deque[Job] = deque()
        self.queued_inputs = 0
        self.wakeup = asyncio.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="refimpl-forward")
        self.ready = False
        self.closing = False
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run(), name="refimpl-batcher")
        self.task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task):
        """The worker only ends on close(); if it died, fail what waits instead of leaving it hanging."""
        self.ready = False
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.error("the batching worker stopped: %s: %s", type(error).__name__, error)
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the batching worker stopped"))
        self.queue.clear()
        self._queued(-self.queued_inputs)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, encoded: Encoded, prompt_length: int = 0) -> np.ndarray:
        """[B, D] rows of ``encoded``; cancelling the caller drops what has not started."""
        if not self.alive:
            raise errors.ApiError(503, "Unhealthy", "the batching worker is not running (shutting down, or it failed)")
        job = Job(encoded, prompt_length, asyncio.get_running_loop().create_future())
        if job.count == 0:
            return np.empty((0, self.model.get_sentence_embedding_dimension()), np.float32)
        self.queue.append(job)
        self._queued(job.count)
        self.wakeup.set()
        return await job.future  # a cancelled await cancels job.future: the worker then skips it

    def _queued(self, delta: int):
        self.queued_inputs += delta
        self.metrics.queue_size.set(self.queued_inputs)

    def take(self) -> tuple[list[tuple[Job, int, int]], int]:
        """The next forward pass: [(job, start, stop)] within the token budget, and its prompt_length."""
        taken, tokens, prompt_length, index = [], 0, None, 0
        while index < len(self.queue) and tokens < self.budget:
            job = self.queue[index]
            if job.cancelled:
                del self.queue[index]
                self._queued(-(job.count - job.next))
                self.metrics.dropped.inc(job.count - job.next)
                continue
            if prompt_length is None:
                prompt_length = job.prompt_length
            elif job.prompt_length != prompt_length:
                index += 1
                continue
            lengths, start = job.encoded.lengths, job.next
            stop = start
            while stop < job.count and (tokens + lengths[stop] <= self.budget or not taken and stop == start):
                tokens += int(lengths[stop])
                stop += 1
            if stop == start:
                break
            taken.append((job, start, stop))
            job.next = stop
            self._queued(start - stop)
            if stop < job.count:
                break
            del self.queue[index]
        return taken, prompt_length or 0

    async def run(self):
        await self.warm_up()
        while True:
            if not self.queue:
                if self.closing:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            taken, prompt_length = self.take()
            if taken:
                await self.forward(taken, prompt_length)

    def _embed(self, encoded: Encoded, prompt_length: int) -> np.ndarray:
        if self.settings.debug_forward_delay:
            time.sleep(self.settings.debug_forward_delay)
        return self.model.embed_batch(encoded, prompt_length=prompt_length)

    async def forward(self, taken, prompt_length: int):
        parts = [
            job.encoded if (start, stop) == (0, job.count) else job.encoded.select(list(range(start, stop)))
            for job, start, stop in taken
        ]
        encoded = parts[0] if len(parts) == 1 else Encoded.concatenate(parts)
        self.metrics.batch_size.observe(len(encoded.lengths))
        self.metrics.batch_tokens.observe(int(encoded.lengths.sum()))
        began = time.perf_counter()
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self.pool, self._embed, encoded, prompt_length)
        except Exception as error:  # a model failure answers the requests in this pass, never kills the worker
            logger.error("forward pass failed: %s: %s", type(error).__name__, error)
            for job, _, _ in taken:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self.metrics.forward.observe(time.perf_counter() - began)
        offset = 0
        for job, start, stop in taken:
            job.deliver(start, rows[offset : offset + stop - start])
            offset += stop - start

    async def warm_up(self):
        """One embedding before /health says 200 (numba's kernels load, their threads start)."""
        try:
            sample = self.model.tokenize_batch(["warm-up"])
            await asyncio.get_running_loop().run_in_executor(self.pool, self.model.embed_batch, sample)
        except Exception as error:
            logger.error("warm-up embedding failed: %s: %s", type(error).__name__, error)
            raise
        self.ready = True
        logger.info("ready: warm-up embedding done")

    async def close(self):
        """Finish what is queued, then stop the worker and its thread."""
        self.closing = True
        self.wakeup.set()
        if self.task is not None:
            try:
                await self.task
            except Exception as error:  # already logged by _stopped; shutting down regardless
                logger.debug("batching worker ended with %s", error)
        self.pool.shutdown(wait=True)
