"""`GET /gpus` on the control socket shows each GPU's budget use (supervisor/control/server.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.control.server import ControlApi
from bawt_vllm.supervisor.runtime.gpus import GIB, GpuInfo, StaticInventory
from bawt_vllm.supervisor.runtime.pool import Pool
from helpers import standin_entry, standin_settings, tracked, write_models_yaml


def test_each_gpu_lists_the_budgets_of_the_models_on_it(tmp_path: Path) -> None:
    models = {"a": standin_entry(gpu_memory_utilization=0.4), "b": standin_entry(gpu_memory_utilization=0.35),
              "whole": standin_entry()}
    config = load_config(write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path)))
    total = 80 * GIB
    gpus = [GpuInfo(0, "GPU-0", "NVIDIA H100", total, GIB, total - GIB, ()),
            GpuInfo(1, "GPU-1", "NVIDIA H100", total, GIB, total - GIB, ())]
    pool = tracked(Pool(config, inventory=StaticInventory(gpus)))

    async def scenario() -> list[dict]:
        try:
            for alias in ("a", "b", "whole"):
                await pool.up(alias, timeout=20)
            api = ControlApi(pool, gateway_url="http://127.0.0.1:1", reload=lambda: asyncio.sleep(0, []))
            async with TestClient(TestServer(api.app())) as http:
                response = await http.get("/gpus")
                return (await response.json())["gpus"]
        finally:
            await pool.close()

    rows = {row["index"]: row for row in asyncio.run(scenario())}
    assert rows[0]["budgets"] == {"a": 0.4, "b": 0.35} and rows[0]["budget_used"] == 0.75
    assert rows[1]["budgets"] == {"whole": None} and rows[1]["budget_used"] is None
