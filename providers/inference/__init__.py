"""Inference providers."""
