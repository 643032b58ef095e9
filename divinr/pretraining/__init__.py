"""Pretraining of the project's own small backbones (the shipped ``mini`` Wan)."""
