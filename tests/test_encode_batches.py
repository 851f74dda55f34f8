"""Encode batches: sized for the device, halved on out-of-memory, never acknowledged away."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from orchestrator import jobs
from tests.conftest import settings_from_env
from workers.runner import Runner, holder_name
from workers.runtime import WorkerContext, close_contexts, default_patch_budget, get_context
from workers.stages import encode_halving


def fake_encode(limit: int, calls: list[int]) -> Any:
    """An encoder that runs out of device memory on batches over `limit` pieces."""

    def encode(pieces: list[np.ndarray]) -> np.ndarray:
        calls.append(len(pieces))
        if len(pieces) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.stack([np.full(4, float(p[0, 0])) for p in pieces])

    return encode


def pieces(n: int) -> list[np.ndarray]:
    return [np.full((3, 64), i, dtype=np.int64) for i in range(n)]


def test_out_of_memory_halves_until_it_fits_and_keeps_the_order() -> None:
    calls: list[int] = []
    vectors = encode_halving(fake_encode(5, calls), pieces(40))
    assert vectors[:, 0].tolist() == list(range(40))
    assert calls[:3] == [40, 20, 10] and max(c for c in calls if c <= 5) == 5


def test_a_single_piece_that_does_not_fit_raises() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encode_halving(fake_encode(0, []), pieces(4))


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken(batch: list[np.ndarray]) -> np.ndarray:
        calls.append(len(batch))
        raise ValueError("bad piece")

    with pytest.raises(ValueError):
        encode_halving(broken, pieces(8))
    assert calls == [8]


@dataclass
class OomEncoder:
    """The real encoder, behind a GPU that only fits `limit` pieces per call."""

    real: Any
    limit: int
    calls: list[int] = field(default_factory=list)

    def encode_music(self, batch: list[np.ndarray]) -> np.ndarray:
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return self.real.encode_music(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclass
class SmallGpuContext(WorkerContext):
    limit: int = 8

    @cached_property
    def encoder(self) -> Any:  # type: ignore[override]
        return OomEncoder(get_context(self.settings).encoder, self.limit)

    def encoder_for(self, collection: str) -> Any:  # every collection's model on that GPU
        return self.encoder


def test_a_job_on_a_small_gpu_indexes_everything(
    embedded_env: dict[str, str], wikimt_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    for source in sorted(wikimt_dir.glob("*.abc"))[:50]:
        (corpus / source.name).write_bytes(source.read_bytes())
    close_contexts()
    settings = settings_from_env(embedded_env, encode_claim_pieces=50)
    ctx = SmallGpuContext(settings)
    try:
        plan = jobs.plan_ingest(ctx.sessions, settings, [corpus])
        runner = Runner(ctx, holder_name("test"))
        while runner.drain("parse").claims + runner.drain("encode").claims:
            pass
        counts = jobs.job_counts(ctx.sessions, plan.job_id)
        assert counts is not None
        assert (counts.status, counts.indexed, counts.failed) == ("done", 50, 0)
        calls = ctx.encoder.calls
        # The first call had every piece; the calls that fit covered each exactly once.
        assert calls[0] == 50 and sum(c for c in calls if c <= 8) == 50
        assert ctx.store.count(ctx.active_collection()) == 50
    finally:
        close_contexts()


def test_claims_and_forwards_are_sized_for_the_device(embedded_env: dict[str, str]) -> None:
    cpu = Runner(get_context(settings_from_env(embedded_env, device="cpu")), "t")
    gpu = Runner(get_context(settings_from_env(embedded_env, device="cuda")), "t")
    assert (cpu.claim_size("encode"), gpu.claim_size("encode")) == (1024, 4096)
    assert (default_patch_budget("cpu"), default_patch_budget("cuda:1")) == (4096, 65536)
    fixed = Runner(get_context(settings_from_env(embedded_env, encode_claim_pieces=300)), "t")
    assert fixed.claim_size("encode") == 300
