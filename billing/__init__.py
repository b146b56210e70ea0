"""The core: accounts, keys, the credit ledger, pricing and the generation lifecycle.

Imports nothing from ``server``, ``schema`` or ``gpu_worker`` (enforced by a test).
"""
