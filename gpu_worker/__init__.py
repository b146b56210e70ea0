"""The workers: the GPU worker's arq job and diffusers pipelines, webhook and Stripe event
delivery, the sweeper. What they share with the API (settings, queue, broker, storage)
lives in ``runtime``; nothing here imports ``server`` or ``schema``.

Importing this package must not import torch: the webhook worker and the CLI need none of
it. Torch is imported lazily by ``pipeline`` and ``tiny``.
"""
