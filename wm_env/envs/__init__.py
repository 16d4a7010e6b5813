"""Gymnasium environments backed by a world model (single and batched vector env)."""
