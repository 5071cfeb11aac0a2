"""The start-up error's hint for a refused TUNSETIFF (old kernels cannot be had here)."""

from __future__ import annotations

import errno

from publisher.daemon import tun_open_hint


def test_einval_with_several_queues_names_the_kernel_and_the_way_out() -> None:
    hint = tun_open_hint(errno.EINVAL, 2)
    assert "Linux 3.8 or later" in hint and "translator.workers: 1" in hint


def test_busy_second_queue_is_an_old_kernel_ignoring_the_multi_queue_flag() -> None:
    """Before 3.8, queue 0 silently makes a single-queue TUN and queue 1 is EBUSY."""
    hint = tun_open_hint(errno.EBUSY, 2, failed=1)
    assert "Linux 3.8 or later" in hint and "another program" not in hint


def test_einval_with_one_queue_and_other_errors_add_nothing_misleading() -> None:
    assert tun_open_hint(errno.EINVAL, 1) == ""
    assert tun_open_hint(errno.EPERM, 2) == ""
    assert tun_open_hint(None, 1) == ""
    assert "another program" in tun_open_hint(errno.EBUSY, 1)
    assert "another program" in tun_open_hint(errno.EBUSY, 2, failed=0)
