"""The recipes: every model they build carries the configured sizes and dropout."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the train extra: pip install '.[train]'")

from torch import nn  # noqa: E402

from training import fashion, sentiment  # noqa: E402
from training.config import CNNConfig, LSTMConfig  # noqa: E402
from training.pipeline import RECIPES  # noqa: E402
from training.prune import prune_cnn_structured  # noqa: E402
from training.recipe import Recipe, save_model  # noqa: E402
from training.workspace import Workspace  # noqa: E402

pytestmark = pytest.mark.training


def dropouts(model: nn.Module) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, nn.Dropout)}


def test_configured_cnn_dropout_reaches_every_model_built(tmp_path: Path) -> None:
    config = CNNConfig(dropout=0.123)
    assert CNNConfig().dropout != 0.123  # not the default, so the value must have been passed on
    recipe = fashion.RECIPE
    trained = fashion.build_model({"conv1": 32, "conv2": 64, "hidden": 128}, config)
    ws = Workspace(tmp_path, tmp_path)
    save_model(ws, "trained", trained, trained.widths)
    loaded = recipe.load(ws, "trained", config)  # what pruning fine-tunes from
    pruned = prune_cnn_structured(loaded, config.keep_channels, config.keep_hidden, config.width_multiple)
    for model in (trained, loaded, pruned, pruned.fused_for_export()):
        assert dropouts(model) == {0.123}


def test_configured_lstm_sizes_and_dropout_reach_every_model_built(tmp_path: Path) -> None:
    config = LSTMConfig(dropout=0.321, embed_dim=8, hidden=12)
    trained = sentiment.build_model(50, config)
    ws = Workspace(tmp_path, tmp_path)
    save_model(ws, "trained", trained, 50)
    loaded = sentiment.RECIPE.load(ws, "trained", config)
    for model in (trained, loaded):
        assert dropouts(model) == {0.321}
        assert model.embedding.embedding_dim == 8
        assert model.forward_lstm.hidden_size == 12


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_declare_what_the_pipeline_needs(name: str) -> None:
    recipe: Recipe = RECIPES[name]
    assert recipe.name == name
    for step in ("train", "prune", "export", "quantize", "scoring_data", "latency_feed"):
        assert callable(getattr(recipe, step)), step
    config = recipe.config_type()
    assert config.max_batch_size > 0  # the manifest's batching defaults come from the config
    assert recipe.outputs[0].shape[-1] == len(recipe.labels)


def test_the_served_student_is_one_the_pipeline_makes() -> None:
    with pytest.raises(ValueError, match="served_student"):
        CNNConfig(served_student="teacher")
    with pytest.raises(ValueError, match="served_student"):
        LSTMConfig(served_student="trained")
