"""Synthetic street-view photos of the synthetic world (crawl stage of the demo).

:mod:`vglpipe.render.streetview` renders ground-level photos from a world's orthophoto and
height map with a vectorized height-field ray caster; ``python -m vglpipe.render`` renders
a demo region's photos into a source directory that the fake Mapillary API serves.
"""
