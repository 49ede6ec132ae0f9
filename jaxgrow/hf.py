"""Deprecated alias of jaxgrow.interop.hf (the package moved into wings; this alias goes in the next release).
`jaxgrow.hf.generate` was jaxgrow.serve.decode.generate."""

import warnings

from jaxgrow.interop.hf import *  # noqa: F401,F403
from jaxgrow.serve.decode import generate  # noqa: F401


warnings.warn("jaxgrow.hf moved to jaxgrow.interop.hf (generate: jaxgrow.serve.decode); import it from there "
              "(this alias is removed in the next release)", DeprecationWarning, stacklevel=2)
