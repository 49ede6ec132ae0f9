"""Deprecated alias of jaxgrow.serve.decode (the package moved into wings; this alias goes in the next release)."""

import warnings

from jaxgrow.serve.decode import *  # noqa: F401,F403


warnings.warn("jaxgrow.sampling moved to jaxgrow.serve.decode; import it from there (this alias is removed in "
              "the next release)", DeprecationWarning, stacklevel=2)
