"""The X/Y/Z plot script (A1111's "x/y/z plot"): axes of values, a grid of ordinary jobs, a labelled grid image.

``values`` parses A1111's value syntax, ``axes`` is the axis table (names, A1111's indices, how each
changes a request), ``grid`` turns the script's arguments into a ``GridRequest`` and its cells,
``draw`` draws the labelled grid and ``run`` runs a grid as one queue job over the engine.
"""
