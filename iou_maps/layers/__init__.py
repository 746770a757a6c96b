"""Layers: what a metric map shows (predicted, true, error values), rendered and summarised."""
