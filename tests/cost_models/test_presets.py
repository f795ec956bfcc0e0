from dataclasses import fields
from pathlib import Path

import pytest

from dora_fx.cost_models import presets
from dora_fx.cost_models.device import Device

DOC = Path(__file__).resolve().parents[2] / "docs" / "devices.md"
_DEFAULTS = {f.name: f.default for f in fields(Device)}


@pytest.mark.parametrize("preset", sorted(presets.DEVICE_PRESETS))
def test_every_preset_number_has_a_source(preset):
    device = presets.DEVICE_PRESETS[preset]()
    sourced = presets.SOURCES[preset]
    for f in fields(Device):
        value = getattr(device, f.name)
        if isinstance(value, (int, float)) and value is not None and value != _DEFAULTS[f.name]:
            assert f.name in sourced, f"{preset}.{f.name} = {value!r} has no source"
    for key in sourced:
        assert hasattr(device, key)


def test_docs_list_the_presets_with_their_sources():
    text = DOC.read_text()
    assert presets.sources_markdown() in text, "docs/devices.md is out of date: paste sources_markdown()"


def test_network_presets_build():
    names = ["a", "b"]
    for make in presets.NETWORK_PRESETS.values():
        net = make(names)
        assert net.link("a").up_bps > 0 and net.path("a", "b")


def test_a_preset_field_comes_with_its_source():
    import pytest

    from dora_fx.cost_models.presets.devices import _device

    with pytest.raises(TypeError, match=r"preset 'toaster': dense_flops_per_s must be \(value, source\)"):
        _device("toaster", kind="other", dense_flops_per_s=1e9)  # type: ignore[arg-type]
