"""Experiment configs in the big_vision style: `get_config(arg)` per file."""
