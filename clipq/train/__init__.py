"""Training of every seed task on the embedded world or real data (PyTorch)."""
