"""The gateway's latency histograms, as a Prometheus scrape reads them, in both modes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.histogram import CollectedHistogram, open_histogram

BUCKETS = (0.01, 0.1, 1)
OBSERVED = (0.005, 0.01, 0.05, 0.1, 0.5, 2.0, 0.0)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#") and "_created" not in line}


def test_buckets_count_and_sum_match_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = open_histogram("lat_seconds", "latency", ["route"], BUCKETS, ours, multiprocess=False)
    # multiprocess=True hands back prometheus-client's Histogram (in memory without PROMETHEUS_MULTIPROC_DIR)
    reference = open_histogram("lat_seconds", "latency", ["route"], BUCKETS, theirs, multiprocess=True)
    assert isinstance(mine, CollectedHistogram)
    for value in OBSERVED:
        mine.observe(("quick",), value)
        reference.observe(("quick",), value)
    mine.observe(("deep",), 0.2)
    reference.observe(("deep",), 0.2)
    expected = scrape(theirs)
    assert scrape(ours) == expected
    # a value equal to a bound is in that bucket ("le"), and every bucket is cumulative
    assert expected['lat_seconds_bucket{le="0.01",route="quick"}'] == 3
    assert expected['lat_seconds_bucket{le="+Inf",route="quick"}'] == len(OBSERVED)
    assert expected['lat_seconds_sum{route="quick"}'] == pytest.approx(sum(OBSERVED))


def test_the_scrape_text_declares_a_histogram() -> None:
    registry = CollectorRegistry()
    open_histogram("lat_seconds", "latency", ["route"], BUCKETS, registry, False).observe(("quick",), 0.3)
    text = generate_latest(registry).decode()
    assert "# TYPE lat_seconds histogram" in text and "# HELP lat_seconds latency" in text
    assert registry.get_sample_value("lat_seconds_count", {"route": "quick"}) == 1


def test_wrong_number_of_label_values_is_refused() -> None:
    histogram = open_histogram("lat_seconds", "latency", ["route", "stream"], BUCKETS, CollectorRegistry(), False)
    with pytest.raises(ValueError, match="2 label values"):
        histogram.observe(("quick",), 0.1)


def test_a_name_taken_twice_in_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    open_histogram("lat_seconds", "latency", ["route"], BUCKETS, registry, False)
    with pytest.raises(ValueError):
        open_histogram("lat_seconds", "latency", ["route"], BUCKETS, registry, False)
