"""The synthetic demo: everything the embedded default needs and a real run does not.

Demo regions' boundaries (:mod:`~vglpipe.demo.regions`), procedural worlds
(:mod:`~vglpipe.demo.world`), the street-view renderer (:mod:`~vglpipe.demo.streetview`,
:mod:`~vglpipe.demo.photos`), the local fake servers speaking the real protocols
(:mod:`~vglpipe.demo.fake_mapillary`, :mod:`~vglpipe.demo.fake_orthophotos`) and the wrapper
that runs a production stage against them (:mod:`~vglpipe.demo.serve`). Production code never
imports this package.
"""
