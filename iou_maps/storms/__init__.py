"""Storms: their catalogue, imagery mosaic, chips of analysis tiles, the analysis grid, synthetic
storms."""
