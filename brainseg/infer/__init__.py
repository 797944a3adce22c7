"""Inference stage: sliding windows and batch prediction."""
