"""Referring-VOS datasets: raw readers, shard building and grain pipelines."""
