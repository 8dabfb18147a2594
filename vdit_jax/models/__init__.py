"""Flax NNX modules: the frozen backbone towers and the trainable head."""
