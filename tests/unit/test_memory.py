"""The heap trimmer: one trim per interval, and never the last one skipped."""

from __future__ import annotations

import asyncio

from cuprumd.memory import HeapTrimmer


def test_a_burst_trims_at_once_and_once_more_after_the_interval() -> None:
    async def go() -> int:
        trimmer = HeapTrimmer(interval=0.05)
        if trimmer._trim is None:  # not glibc: nothing to give back
            return -1
        for _ in range(10):
            trimmer.after_large()
        assert trimmer.trims == 1
        await asyncio.sleep(0.1)
        assert trimmer.trims == 2  # the rest of the burst, once
        trimmer.after_large()
        assert trimmer.trims == 3
        trimmer.after_large()
        trimmer.close()
        await asyncio.sleep(0.1)
        return trimmer.trims

    assert asyncio.run(go()) == 3
