"""docs/configuration.md is exactly what the validator's models say."""

from __future__ import annotations

from guardian.config.reference import reference_path, render


def test_reference_doc_is_up_to_date() -> None:
    doc = reference_path().read_text(encoding="utf-8")
    assert doc.strip() == render().strip(), "run: guardian config reference > docs/configuration.md"


def test_reference_lists_every_check_kind_and_section() -> None:
    text = render()
    for kind in ("http", "comfyui", "comfyui_canary", "disk", "memory", "gpu", "service"):
        assert f'kind = "{kind}"' in text
    assert "| cooldown | float | `30.0` |" in text
