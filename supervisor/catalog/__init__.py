"""Authoring models.yaml: Hugging Face Hub search and inspection, entries for llm-bawt, comment-keeping YAML edits.

Imports `config` and `runtime` (the weights a start needs); never the daemon or the CLI.
"""
