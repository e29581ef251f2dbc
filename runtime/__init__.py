"""Inference runtime serving sparse attention and embeddings over HTTP."""
