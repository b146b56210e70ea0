"""The core: accounts, keys, the credit ledger, pricing and the generation lifecycle.

Imports nothing from ``runtime``, ``server``, ``schema``, ``gpu_worker`` or ``kinds``
(import-linter contracts in pyproject.toml, and an AST test).
"""
