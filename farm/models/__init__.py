"""Model loading: the tiny offline builders and the real `from_pretrained` path."""
