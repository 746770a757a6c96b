"""Storms: their imagery on disk, read as mosaics, cut into analysis tiles.

On disk: ``catalog`` (storm names, ``Catalog``, ``Storm``), ``ingest`` (source imagery → COGs;
``discovery`` finds the scenes, ``georeference`` reads them, ``footprints`` is the index).
Reading: ``mosaic`` (the rio-tiler backend of a storm), ``scenes`` (open scene files, the
scene reader), ``open_storms`` (storms kept open), ``grid_reads`` (bulk reads on the pixel
grid), ``imagery`` (imagery tiles), ``chips`` (model input per analysis tile), ``grid`` (the
analysis grid). ``synthetic``: generated NOAA-like storms.
"""
