"""The GPU worker: arq jobs, diffusers pipelines, image storage.

Importing this package must not import torch: the API server uses ``storage`` and
``queue`` from here without the worker extra installed. Torch is imported lazily by
``pipeline`` and ``tiny``.
"""
