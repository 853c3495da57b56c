//! End-to-end against a real OpenAI-compatible server (llama.cpp via scripts/llm-server.py).
