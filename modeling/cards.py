"""Model cards rendered from the templates shipped in ``data2vec_hf.model_cards``."""

from __future__ import annotations

from importlib import resources

from huggingface_hub import ModelCard, ModelCardData


def template_path(name: str) -> str:
    """Path of the packaged template ``<name>.md``."""
    path = resources.files("data2vec_hf.model_cards") / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"no model card template named {name!r}")
    return str(path)


def render_model_card(template: str, card_data: ModelCardData, **variables) -> ModelCard:
    """Render the packaged ``template`` with huggingface_hub's ``ModelCard.from_template``."""
    return ModelCard.from_template(card_data, template_path=template_path(template), **variables)
