"""Latency histograms for the request path, at a bisect and two additions per observation.

prometheus-client's `Histogram.observe` takes a lock and updates a value object for the
sum and for the bucket, about 9k instructions under CPython 3.11; the gateway observes
twice per request. In one process the counts can live in plain lists and be rendered
when scraped, through prometheus-client's documented custom-collector interface, so that
is what `open_histogram` gives a single-process gateway. With several workers
(`PROMETHEUS_MULTIPROC_DIR`) every value must reach prometheus-client's per-process files
for the scrape to merge them, so there it hands back prometheus-client's own histogram.
Both take the same `observe(label_values, seconds)`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LabelledHistogram(Protocol):
    def observe(self, labels: tuple[str, ...], value: float) -> None: ...


class CollectedHistogram(Collector):
    """One labelled histogram kept in this process and rendered at scrape time.

    Not thread-safe, like the rest of the gateway's metrics: observed and scraped from the
    event loop's thread.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._bucket_names = (*map(floatToGoString, self._bounds), "+Inf")
        # label values -> [observations per bucket (not cumulative) ..., observations above the last bound, sum]
        self._series: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self._series.get(labels)
        if row is None:
            if len(labels) != len(self._labelnames):
                raise ValueError(f"{self._name} takes {len(self._labelnames)} label values, got {len(labels)}")
            row = self._series[labels] = [0] * (len(self._bounds) + 1) + [0.0]
        # observations equal to a bound belong to its bucket (le = "less than or equal")
        row[bisect_left(self._bounds, value)] += 1
        row[-1] += value

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, row in list(self._series.items()):
            cumulative = 0.0
            buckets = []
            for bucket_name, count in zip(self._bucket_names, row):
                cumulative += count
                buckets.append((bucket_name, cumulative))
            family.add_metric(list(labels), buckets, row[-1])
        yield family


class _ClientHistogram:
    """prometheus-client's own histogram behind the same observe(), its children cached."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._histogram.labels(*labels)
        child.observe(value)


def open_histogram(name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                   registry: CollectorRegistry, multiprocess: bool) -> LabelledHistogram:
    if multiprocess:
        return _ClientHistogram(Histogram(name, documentation, labelnames, buckets=buckets, registry=registry))
    return CollectedHistogram(name, documentation, labelnames, buckets, registry)
