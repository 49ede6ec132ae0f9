"""The public API keeps working after the move into wings: the README's snippet names, and the deprecated
top-level aliases (one release) resolve to the same objects and warn."""

import importlib
import sys
import warnings

import pytest

from jaxgrow.interop import hf
from jaxgrow.serve import decode, speculative
from jaxgrow.train import schedules


def test_model_api_resolves_lazily_to_the_decoder():
    import jaxgrow.model
    from jaxgrow.model import decoder

    assert jaxgrow.model.init_params is decoder.init_params and jaxgrow.model.logits is decoder.logits
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxgrow.model.nope  # noqa: B018


@pytest.mark.parametrize("alias,name,target", [
    ("jaxgrow.schedules", "make_lr_schedule", lambda: schedules.make_lr_schedule),
    ("jaxgrow.hf", "save_pretrained", lambda: hf.save_pretrained),
    ("jaxgrow.hf", "load_params", lambda: hf.load_params),
    ("jaxgrow.hf", "generate", lambda: decode.generate),
    ("jaxgrow.sampling", "generate", lambda: decode.generate),
    ("jaxgrow.inference", "generate_batch", lambda: decode.generate_batch),
    ("jaxgrow.inference", "speculative_generate", lambda: speculative.speculative_generate),
])
def test_deprecated_aliases_warn_and_reexport(alias, name, target):
    sys.modules.pop(alias, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(alias)
    assert any(issubclass(w.category, DeprecationWarning) and alias in str(w.message) for w in caught)
    assert getattr(module, name) is target()


def test_python_m_jaxgrow_main_is_the_cli():
    import jaxgrow.main
    from jaxgrow.cli import main

    assert jaxgrow.main.run is main.run and jaxgrow.main.main is main.main
