"""Prometheus text exposition format (version 0.0.4), written by hand.

Names follow TEI's (te_request_count, te_request_success, te_request_failure{err},
te_request_duration, te_request_input_length, te_batch_next_size, te_batch_next_tokens,
te_queue_size) so that TEI dashboards keep working; refimpl adds a few (inputs and
tokens counters, requests in flight, inputs dropped because their client went away,
forward-pass duration). Everything is updated on the event loop thread only.
"""

from __future__ import annotations

import math
from collections import defaultdict


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}" if labels else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    kind = "counter"

    def __init__(self, name, help_text):
        super().__init__(name, help_text)
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1, **labels):
        self.values[tuple(sorted(labels.items()))] += amount

    def get(self, **labels) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels):
        self.values[tuple(sorted(labels.items()))] = value


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name, help_text, buckets):
        super().__init__(name, help_text)
        self.buckets = sorted(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float):
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines, running = self.header(), 0
        for bound, count in zip(self.buckets + [math.inf], self.counts):
            running += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        return lines + [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]


def _geometric(start: float, factor: float, count: int) -> list[float]:
    return [round(start * factor**i, 9) for i in range(count)]


class Metrics:
    def __init__(self, max_input_length: int):
        powers = [2.0**i for i in range(21)]
        self.requests = Counter("te_request_count", "Requests received, by route")
        self.success = Counter("te_request_success", "Requests answered with 2xx, by route")
        self.failure = Counter("te_request_failure", "Requests refused or failed, by reason")
        self.inputs = Counter("te_request_inputs", "Inputs in successful requests")
        self.tokens = Counter("te_request_tokens", "Tokens embedded for successful requests (after truncation)")
        self.dropped = Counter(
            "te_request_dropped_inputs", "Queued inputs dropped before a forward pass (client went away)"
        )
        self.duration = Histogram("te_request_duration", "Request latency in seconds", _geometric(0.00015, 1.5, 30))
        self.input_length = Histogram(
            "te_request_input_length",
            "Tokens per input",
            [p for p in powers if p <= max_input_length] + [float(max_input_length)],
        )
        self.batch_size = Histogram("te_batch_next_size", "Inputs per forward pass", powers[:13])
        self.batch_tokens = Histogram("te_batch_next_tokens", "Tokens per forward pass", powers)
        self.forward = Histogram(
            "te_batch_forward_duration", "Forward pass duration in seconds", _geometric(0.00015, 1.5, 30)
        )
        self.queue_size = Gauge("te_queue_size", "Inputs waiting for a forward pass")
        self.in_flight = Gauge("te_requests_in_flight", "Inference requests being served")
        for counter in (self.inputs, self.tokens, self.dropped):
            counter.inc(0)  # a sample line from the start, so rate() has a baseline
        self.queue_size.set(0)
        self.in_flight.set(0)

    def render(self) -> str:
        metrics = (
            self.requests,
            self.success,
            self.failure,
            self.inputs,
            self.tokens,
            self.dropped,
            self.duration,
            self.input_length,
            self.batch_size,
            self.batch_tokens,
            self.forward,
            self.queue_size,
            self.in_flight,
        )
        return "\n".join(line for metric in metrics for line in metric.render()) + "\n"
