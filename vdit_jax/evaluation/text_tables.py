"""Figures as printed text tables."""

from typing import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Right-aligned columns; numbers with 5 decimals, as the DAVIS toolkit prints them."""
  cells = [list(header)] + [[v if isinstance(v, str) else f"{v:.5f}" for v in row]
                            for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  return "\n".join(" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def figure_table(figures: dict[str, float]) -> str:
  """name -> fraction as a table with the fractions and x 100, as papers quote them."""
  return text_table(("figure", "value", "x 100"), [(k, v, 100 * v) for k, v in figures.items()])
