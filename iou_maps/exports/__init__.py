"""Exports: a storm's maps as PMTiles, MBTiles, COG, STAC and tables."""
