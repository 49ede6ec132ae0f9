"""The public API: the README's snippet names resolve to their wings' objects; no top-level alias modules remain."""

import importlib

import pytest



def test_model_api_resolves_lazily_to_the_decoder():
    import jaxgrow.model
    from jaxgrow.model import decoder

    assert jaxgrow.model.init_params is decoder.init_params and jaxgrow.model.logits is decoder.logits
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxgrow.model.nope  # noqa: B018


def test_python_m_jaxgrow_main_is_the_cli():
    import jaxgrow.main
    from jaxgrow.cli import main

    assert jaxgrow.main.run is main.run and jaxgrow.main.main is main.main


@pytest.mark.parametrize("alias", ["jaxgrow.schedules", "jaxgrow.hf", "jaxgrow.sampling", "jaxgrow.inference"])
def test_the_removed_aliases_are_gone(alias):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(alias)
