"""Model families: one module per family (``sd15``, ``sd2``, ``sdxl``, ``sdxl_refiner``, ``sd3``), each building a
``FamilyAdapter`` (``base.py``), all registered by ``registry.default_families()``.

No module outside this package names a family id; they ask the adapter (docs/ADDING_A_FAMILY.md).
"""
