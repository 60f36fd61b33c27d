"""The method registry: every method is found by name, with its config and kind."""
from __future__ import annotations

import pytest

from medalign_lite.methods import MethodSpec, get_method, list_methods, register_method


def test_every_method_is_registered_with_its_config_and_packaged_configs():
    from medalign_lite.config import available_configs

    names = list_methods()
    assert {"convirt", "gloria", "aga"} <= set(names)
    configs = set(available_configs())
    for name in names:
        spec = get_method(name)
        assert isinstance(spec, MethodSpec) and spec.name == name and spec.paper
        spec.config()  # the config's defaults construct
        assert spec.config_name("tiny") in configs, f"{name}: no configs/{spec.config_name('tiny')}.yaml"
    assert set(list_methods("dual_encoder")) >= {"convirt", "gloria", "aga"}
    assert all(get_method(n).report_generator for n in list_methods("report_generator"))


def test_unknown_names_and_kinds_are_clear_errors():
    with pytest.raises(ValueError, match="unknown method 'agaa'; choose one of"):
        get_method("agaa")
    with pytest.raises(ValueError, match="kind must be one of"):
        list_methods("retriever")
    with pytest.raises(ValueError, match="kind must be one of"):
        register_method("x", config=dict, kind="retriever")


def test_a_name_cannot_be_taken_by_another_class():
    class Other:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("aga", config=dict, kind="dual_encoder")(Other)
