"""Baselines: explanations and simulations that need no LLM, and connection weights."""
