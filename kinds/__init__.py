"""Job kinds: one module per image operation (see kinds/base.py).

Importing this package registers the built-in kinds."""

from kinds import edit, image_to_image, inpaint, outpaint, text_to_image
from kinds.registry import all_kinds, get, names, register, unregister

__all__ = [
    "all_kinds",
    "edit",
    "get",
    "image_to_image",
    "inpaint",
    "names",
    "outpaint",
    "register",
    "text_to_image",
    "unregister",
]
