"""`GET /metrics`: what a Prometheus scrape sees of the GPUs, the models, the probes and the refusals,
parsed with prometheus-client's own parser; a scrape never runs nvidia-smi."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeSmi
from tests.test_api import anyio_backend, client  # noqa: F401 - the same app and client fixtures

pytestmark = pytest.mark.anyio


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # noqa: F811
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    matches = [v for (n, got), v in samples.items() if n == name and set(labels.items()) <= set(got)]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


async def test_a_scrape_after_a_load_and_a_refusal(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:  # noqa: F811
    fake_smi.add_foreign("1", mib=900)
    assert (await client.get("/api/gpus", params={"refresh": "true"})).status_code == 200
    assert (await client.post("/api/models/alpha/load", json={"gpus": "0"})).status_code == 200
    assert (await client.post("/api/models/beta/load", json={"gpus": "1"})).status_code == 409
    calls = fake_smi.calls
    samples = await scrape(client)
    assert fake_smi.calls == calls  # the scrape read what was there: no nvidia-smi run
    assert value(samples, "gpuwarden_gpu_state", gpu="0", state="model_loaded") == 1.0
    assert value(samples, "gpuwarden_gpu_state", gpu="0", state="idle") == 0.0
    assert value(samples, "gpuwarden_gpu_state", gpu="1", state="occupied_by_others") == 1.0
    assert value(samples, "gpuwarden_gpu_memory_total_bytes", gpu="0") == 24564 * 1024 * 1024
    assert value(samples, "gpuwarden_gpu_memory_used_bytes", gpu="1") >= 900 * 1024 * 1024
    assert value(samples, "gpuwarden_model_loads_total", model="alpha") == 1.0
    assert value(samples, "gpuwarden_model_loads_total", model="beta") == 0.0
    assert value(samples, "gpuwarden_model_state", model="beta", state="not_loaded") == 1.0
    assert value(samples, "gpuwarden_refusals_total", action="load") == 1.0
    assert value(samples, "gpuwarden_probes_total") >= 2 and value(samples, "gpuwarden_probe_errors_total") == 0
    assert value(samples, "gpuwarden_gpus_readable") == 1.0
    assert not [name for name, _ in samples if name == "gpuwarden_queue_waiting"]
    assert (await client.post("/api/models/beta/load", json={"gpus": "1", "wait": True})).status_code == 202
    assert value(await scrape(client), "gpuwarden_queue_waiting", gpu="1") == 1.0
    assert (await client.post("/api/models/alpha/unload")).status_code == 200


async def test_unreadable_gpus_are_counted_and_said(client: httpx.AsyncClient, fake_smi: FakeSmi) -> None:  # noqa: F811
    fake_smi.set_mode("garbage")
    await client.get("/api/gpus", params={"refresh": "true"})
    samples = await scrape(client)
    assert value(samples, "gpuwarden_probe_errors_total") >= 1
    assert value(samples, "gpuwarden_gpus_readable") == 0.0
