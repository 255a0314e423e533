"""Upscalers: spandrel models (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, OmniSR ...) and plain resampling.

``catalog`` lists them from the models folders, ``loading`` reads their weights without running
code, ``tiles`` runs a model over overlapping tiles, ``run`` upscales one image (scale or resize-to,
a second upscaler blended in), ``extras`` is the Extras tab's job (single image and batches).
"""
