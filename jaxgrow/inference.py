"""Deprecated alias of jaxgrow.serve.decode and jaxgrow.serve.speculative (the package moved into wings; this
alias goes in the next release)."""

import warnings

from jaxgrow.serve.decode import *  # noqa: F401,F403
from jaxgrow.serve.speculative import *  # noqa: F401,F403


warnings.warn("jaxgrow.inference moved to jaxgrow.serve.decode and jaxgrow.serve.speculative; import it from "
              "there (this alias is removed in the next release)", DeprecationWarning, stacklevel=2)
