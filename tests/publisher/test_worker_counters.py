"""The worker's side of the counters: folding the no-mapping slot, measuring itself."""

from __future__ import annotations

import os
import resource
import time

from publisher.snapshot import PREFIX_MAPPING
from publisher.worker import Totals, measure_usage
from translator.tun import DIRECTION_4TO6, DIRECTION_6TO4, Counters


def test_absorb_folds_the_no_mapping_slot_under_the_reserved_name() -> None:
    counters = Counters(2)
    counters.packets[DIRECTION_6TO4][0] = 5
    counters.bytes[DIRECTION_6TO4][0] = 500
    counters.packets[DIRECTION_6TO4][-1] = 3  # mapping index -1: through the prefix
    counters.bytes[DIRECTION_6TO4][-1] = 360
    counters.packets[DIRECTION_4TO6][-1] = 2
    counters.bytes[DIRECTION_4TO6][-1] = 280
    totals = Totals()
    totals.absorb(["cam", "nas"], counters)
    totals.absorb(["cam", "nas"], counters)  # a reload folds the old generation in again
    assert totals.packets == {
        ("cam", "6to4"): 10,
        ("nas", "6to4"): 0,
        (PREFIX_MAPPING, "6to4"): 6,
        ("cam", "4to6"): 0,
        ("nas", "4to6"): 0,
        (PREFIX_MAPPING, "4to6"): 4,
    }
    assert totals.bytes[(PREFIX_MAPPING, "6to4")] == 720
    assert totals.bytes[(PREFIX_MAPPING, "4to6")] == 560


def test_absorb_with_no_mappings_keeps_the_prefix_traffic() -> None:
    counters = Counters(0)
    counters.packets[DIRECTION_4TO6][-1] = 7
    totals = Totals()
    totals.absorb([], counters)
    assert totals.packets == {(PREFIX_MAPPING, "6to4"): 0, (PREFIX_MAPPING, "4to6"): 7}


def test_measure_usage_describes_this_process() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with_extra = measure_usage(3)
    finally:
        os.close(fd)
    usage = measure_usage(3)
    assert usage.index == 3
    assert usage.pid == os.getpid()
    assert with_extra.open_fds == usage.open_fds + 1
    assert usage.open_fds == len(os.listdir(f"/proc/{os.getpid()}/fd")) - 1
    # Resident memory lies between 1 MiB and the peak this process ever had.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 1 << 20 < usage.resident_bytes <= peak
    # The process CPU clock, read just before and just after.
    assert 0 < with_extra.cpu_seconds <= usage.cpu_seconds
    assert usage.cpu_seconds <= time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
