"""PyTorch models of clipq (transformers classes): CLIP, the VQA model, image -> prompt models."""
