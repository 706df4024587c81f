"""Inference: base models and LoRA adapters (models), chat templates (chat), sampling
(generate), padding-free passes (packing) and the pages' try-it jobs (tryout)."""
