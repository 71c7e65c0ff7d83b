"""Causal LMs to onnxruntime-genai folders: a tiny random Llama through every recipe kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelpress.components.llm_export import (
    LlmRecipe,
    build_genai_folder,
    model_bytes,
    read_build_record,
)
from modelpress.components.llm_zoo import (
    english_prompts,
    english_text,
    smollm2_folder,
    tiny_llama_folder,
)
from modelpress.errors import InvalidInput

NEW_TOKENS = 5
RECIPES = {
    "fp32": LlmRecipe(weights="fp32"),
    "int8": LlmRecipe(weights="int8", embeddings="int8", lm_head="int8"),
    "int4": LlmRecipe(weights="int4", block_size=64, embeddings="int4", lm_head="int4"),
    "mixed": LlmRecipe(weights="int4", embeddings="int8", lm_head="int8",
                       layer_overrides=[{"layers": [1], "weights": "int8"}]),
    "k_quant": LlmRecipe(weights="int4", algorithm="k_quant", lm_head="int8"),
    "hqq": LlmRecipe(weights="int4", algorithm="hqq", symmetric=False, block_size=64,
                     lm_head="int8"),
    "gptq": LlmRecipe(weights="int4", algorithm="gptq", block_size=64, lm_head="int8"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def built(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("genai")
    calibration = english_text("train")[:4]
    return {name: build_genai_folder(tiny, recipe, root / name,
                                     calibration if recipe.algorithm == "gptq" else None)
            for name, recipe in RECIPES.items()}


def _greedy(folder: Path, prompt: str) -> tuple[list[int], list[int]]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokens = list(og.Tokenizer(model).encode(prompt))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + NEW_TOKENS,
                              min_length=len(tokens) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    while not generator.is_done():
        generator.generate_next_token()
    return tokens, [int(token) for token in generator.get_sequence(0)]


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_builds_a_folder_genai_runs(built: dict[str, Path], name: str) -> None:
    folder = built[name]
    config = json.loads((folder / "genai_config.json").read_text())
    assert "past_key_names" in config["model"]["decoder"]["inputs"]
    assert (folder / "tokenizer.json").is_file()
    prompt, sequence = _greedy(folder, english_prompts()[0])
    assert sequence[:len(prompt)] == prompt and len(sequence) == len(prompt) + NEW_TOKENS
    record = read_build_record(folder)
    assert record.recipe == RECIPES[name] and record.build_seconds > 0


def test_quantized_folders_are_smaller(built: dict[str, Path]) -> None:
    fp32 = model_bytes(built["fp32"])
    # The tiny model is mostly its 49152-token embedding (tied: one copy in every recipe).
    assert model_bytes(built["int8"]) < 0.35 * fp32
    assert model_bytes(built["int4"]) < 0.2 * fp32
    assert model_bytes(built["int4"]) < model_bytes(built["mixed"]) < model_bytes(built["int8"])


def test_the_int8_embedding_reads_the_tied_int8_lm_head(built: dict[str, Path]) -> None:
    import onnx

    model = onnx.load(str(built["int8"] / "model.onnx"), load_external_data=False)
    nodes = {node.name: node for node in model.graph.node}
    gather = nodes["/model/embed_tokens/GatherBlockQuantized"]
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    head = next(node for node in model.graph.node if node.name.startswith("/lm_head/MatMul"))
    assert head.op_type == "MatMulNBits" and {a.name: a.i for a in head.attribute}["bits"] == 8


@pytest.mark.parametrize(("fields", "problem"), [
    ({"weights": "int8", "embeddings": "int8"}, "lm_head int8"),
    ({"weights": "fp32", "lm_head": "int8"}, "floating point"),
    ({"weights": "int4", "algorithm": "hqq"}, "symmetric false"),
    ({"weights": "int8", "algorithm": "gptq"}, "weights int4"),
    ({"weights": "int4", "blockSize": 48}, "blockSize"),
])
def test_recipes_that_cannot_build_are_refused_when_read(fields: dict[str, str],
                                                         problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        LlmRecipe.model_validate(fields)


def test_gptq_without_calibration_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="calibration"):
        build_genai_folder(tiny, LlmRecipe(weights="int4", algorithm="gptq"), tmp_path)


def test_an_override_naming_a_missing_layer_is_refused(tiny: Path, tmp_path: Path) -> None:
    recipe = LlmRecipe(weights="int4", layer_overrides=[{"layers": [7], "weights": "int8"}])
    with pytest.raises(InvalidInput, match="layer 7"):
        build_genai_folder(tiny, recipe, tmp_path)


def test_english_splits_are_disjoint_and_deterministic() -> None:
    evaluation, train = english_text("eval"), english_text("train")
    assert len(evaluation) == 96 and len(train) > len(evaluation)
    assert not set(evaluation) & set(train)
    assert english_text() == evaluation and english_text("train") == train
    prompts = english_prompts()
    assert len(prompts) == len(evaluation)
    assert all(text.startswith(prompt) for prompt, text in zip(prompts, evaluation, strict=True))
    with pytest.raises(InvalidInput, match="splits"):
        english_text("test")


@pytest.mark.e2e
def test_smollm2_is_a_plain_llama_folder() -> None:
    """Converts the shipped GGUF once (about 45 s on 2 shared cores), then reads the cache."""
    from transformers import AutoConfig

    folder = smollm2_folder()
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    assert config.architectures == ["LlamaForCausalLM"] and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        path.name for path in folder.iterdir()}
    assert smollm2_folder() == folder
