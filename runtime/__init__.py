"""What the API and the workers share: settings, the arq queue and its dispatcher, the
event broker, image storage.

A leaf above ``billing``: it imports nothing from ``server``, ``schema``, ``gpu_worker``
or ``kinds`` (import-linter contracts in pyproject.toml). Importing it does not import
torch.
"""
