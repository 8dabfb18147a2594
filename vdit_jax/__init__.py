"""vdit-jax: VD-IT referring video object segmentation in JAX/Flax."""
