"""Clients for bawt-vllm: reach supervised models through the OpenAI API."""
