"""`ps` and `gpus` show each GPU's budget use (supervisor/cli/render.py)."""

from __future__ import annotations

from bawt_vllm.supervisor.cli.render import budget_text, model_cells


def test_ps_shows_a_shared_gpu_with_the_models_budget() -> None:
    row = {"alias": "a", "state": "ready", "gpus": [0], "gpu_budget": 0.4, "port": 8500, "pid": 42}
    assert model_cells(row)[2] == "0 (0.4)"
    assert model_cells({**row, "gpu_budget": None})[2] == "0"
    assert model_cells({"alias": "b", "state": "stopped"})[2] == "-"


def test_gpus_lists_each_models_budget_and_their_sum() -> None:
    assert budget_text({"budgets": {"a": 0.4, "b": 0.35}, "budget_used": 0.75}) == "a 0.4, b 0.35 (0.75 of 1)"
    assert budget_text({"budgets": {"big": None}, "budget_used": None}) == "big whole"
    assert budget_text({"index": 0}) == "-"
