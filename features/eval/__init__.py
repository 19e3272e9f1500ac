"""Evaluation protocols on frozen features."""
