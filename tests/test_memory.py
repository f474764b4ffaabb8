"""memory.keep_freed_memory: sets glibc's mmap/trim thresholds once; a no-op without glibc.

(Its effect, page faults per batch of `bench fid`'s extractor, is measured in the issue note; page
fault counts depend on the allocator's history in the process, so they are not asserted here.)"""

from __future__ import annotations

import ctypes

import sampler_bench.memory as memory


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_sets_both_thresholds_once(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    assert memory.keep_freed_memory() and memory.keep_freed_memory()
    assert fake.calls == [(-3, 1 << 30), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, once


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_done", False)

    def no_libc(name):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert memory.keep_freed_memory() is False


def test_rejected_setting_is_reported(monkeypatch):
    fake = FakeLibc()
    fake.mallopt = lambda p, v: 0
    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    assert memory.keep_freed_memory() is False
