"""vglpipe: statewide cross-view visual geolocalization, stage by stage."""

__version__ = "0.1.0"
