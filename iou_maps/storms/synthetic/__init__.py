"""Procedural NOAA-like post-hurricane storm: aerial RGB frames and label rasters.

The ground is a deterministic function of UTM world coordinates and the seed: a barrier island
on the Outer Banks (Rodanthe/Hatteras, NC, EPSG:32618) with the Atlantic to the east, beach and
overwash sand, dunes and shrubs, houses, a main road and side streets, marsh along Pamlico Sound
to the west. Overlapping frames therefore show the same ground. Frames are shot along 1-3
north-south flight lines, each rotated by the flight's crab angle.

What makes a place hard for a segmentation model varies smoothly in space: haze, cloud shadows,
sun glint, turbid water that looks like sand, wet sand that looks like water, sand-covered roads,
debris, plus per-flight colour casts. Labels always give the true class:

* turbid water, glint and surf foam stay ``water``; wet sand stays ``sand``;
* a road under an overwash veneer stays ``development`` (the road is still there; only its
  colour is blended up to 85 % toward sand), whereas overwash sand on vegetation is ``sand``;
* debris piles keep the class of the ground they lie on (``sand`` or ``vegetation``).

Everything is vectorised numpy; noise is value noise gathered from small hashed lattice tables.

Labels use a class set of ``classes`` (the demo's four by default; a 2-class water mask or a
5-class set with buildings apart for other models).

Modules: ``generate`` writes a storm (``generate_storm``), ``flights`` plans and renders its
frames, ``world`` is the ground (covers and colours), ``classes`` the class sets its covers map
to, ``noise`` the noise it is made of.
"""
