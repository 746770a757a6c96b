"""Exports: a storm's maps as PMTiles, MBTiles, COG, STAC and tables.

Each file format is one module implementing ``format.ExportFormat``, registered by name in
``formats.FORMATS`` (``formats.export_storm`` writes through it). What the formats share:
``layers`` (what is exported), ``tiles`` (the service's tiles), ``metadata``, ``archive``
(the tile archives' common writing), ``filling`` (the cache filled first), ``summary`` and
``replace`` (a file moved into place only once complete).
"""
