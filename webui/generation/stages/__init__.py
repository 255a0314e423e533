"""The stages of a generation job, one module each; ``webui.generation.plan`` puts them in order.

A stage is a small object with a ``name`` and ``__call__(job, batch, ctx)``: it reads the job (the
checked request, the model handle, the engine's parts) and the batch (what earlier stages made) and
leaves its result on the batch. The refiner hand-off and hires fix run a pass of their own with
the functions of ``encode`` and ``denoise``; ``save`` ends the batch (``plan.retry_out_of_memory`` wraps the rest).
"""
