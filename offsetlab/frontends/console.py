"""Printing for the terminal: what the CLI and the demo share."""

from __future__ import annotations


def print_table(frame, floatfmt: str = "{:.3f}") -> None:
    """A pandas DataFrame, wide and with every column, floats as ``floatfmt``."""
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format",
                           floatfmt.format):
        print(frame.to_string())
