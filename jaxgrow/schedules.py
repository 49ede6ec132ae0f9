"""Deprecated alias of jaxgrow.train.schedules (the package moved into wings; this alias goes in the next
release)."""

import warnings

from jaxgrow.train.schedules import *  # noqa: F401,F403


warnings.warn("jaxgrow.schedules moved to jaxgrow.train.schedules; import it from there (this alias is removed "
              "in the next release)", DeprecationWarning, stacklevel=2)
