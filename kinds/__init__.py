"""Job kinds: one module per image operation (see kinds/base.py).

Importing this package registers the built-in kinds."""

from kinds import (
    cleanup,
    edit,
    image_to_image,
    inpaint,
    outpaint,
    pattern,
    seamless,
    text_to_image,
    vectorize,
)
from kinds.registry import all_kinds, get, names, register, unregister

__all__ = [
    "all_kinds",
    "cleanup",
    "edit",
    "get",
    "image_to_image",
    "inpaint",
    "names",
    "outpaint",
    "pattern",
    "register",
    "seamless",
    "text_to_image",
    "unregister",
    "vectorize",
]
