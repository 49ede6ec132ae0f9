"""The model wing: THE parameter layout (layout.py), the decoder, meshes and logical-axis rules (sharding.py), FLOPs,
losses, collectives. May import only config (and storage); every wing above reads the layout from here.

`jaxgrow.model.init_params` and `jaxgrow.model.logits` (the public API) are the decoder's, resolved on first
use so that `jaxgrow.model.layout` alone does not import flax.
"""

from typing import Any


_DECODER_API = ("init_params", "logits")


def __getattr__(name: str) -> Any:
    if name in _DECODER_API:
        from jaxgrow.model import decoder  # noqa: PLC0415

        return getattr(decoder, name)
    raise AttributeError(f"module 'jaxgrow.model' has no attribute {name!r}")
