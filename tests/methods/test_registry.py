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


def test_list_methods_has_one_order_whichever_module_was_imported_first(monkeypatch):
    """The registry fills in import order (a test or a notebook may import ALTA first); the list is
    the package's order, then methods registered elsewhere in registration order."""
    import medalign_lite.methods as registry

    canonical = list_methods()
    assert canonical == ["convirt", "gloria", "aga", "s2d", "exgramed", "alta"]
    # ALTA's and ExGra-Med's modules imported first (within a module, classes register top-down)
    late = ("alta", "exgramed")
    shuffled = {k: registry._REGISTRY[k] for k in late} | {k: v for k, v in registry._REGISTRY.items() if k not in late}
    plugin = MethodSpec("zz_plugin", type("Plugin", (), {"__module__": "someone.else"}), object, "dual_encoder")
    first = MethodSpec("aa_plugin", type("First", (), {"__module__": "another.pkg"}), object, "dual_encoder")
    monkeypatch.setattr(registry, "_REGISTRY", {"zz_plugin": plugin, **shuffled, "aa_plugin": first})
    assert list_methods() == [*canonical, "zz_plugin", "aa_plugin"]
    assert list_methods("report_generator") == ["s2d", "exgramed"]
