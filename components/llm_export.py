"""Causal LMs to onnxruntime-genai model folders, under a weight-only quantization recipe.

The folder (model.onnx + data, genai_config.json, tokenizer files, KV cache inputs and
outputs) comes from onnxruntime-genai's model builder; quantization is onnxruntime's
`MatMulNBitsQuantizer`, driven by the builder (`default` = MLAS round-to-nearest,
`k_quant`) or, for what the builder does not offer (HQQ, GPTQ), run by us over the
builder's fp32 graph. What the builder can and cannot do decides a few rules a recipe
obeys (checked when the recipe is read, so a bad one fails before any build):

- An int8 embedding exists only as the tied lm_head's int8 weights read by
  `GatherBlockQuantized` (the builder's shared-embeddings path); an untied int8 embedding
  has no exporter. An int4 embedding may stand alone.
- HQQ is asymmetric (float zero points) and cannot quantize the embedding.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from modelpress.api import Model
from modelpress.errors import InvalidInput, StepFailed

if TYPE_CHECKING:
    import onnx

Precision = Literal["fp32", "int8", "int4"]
BUILD_RECORD = "modelpress-build.json"
MODEL_FILE = "model.onnx"
# The builder's names for a Llama-family decoder's MatMuls (fused q/k/v on CPU and CUDA).
_LAYER_MATMULS = ("attn/qkv_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")
LM_HEAD_NODE = "/lm_head/MatMul"
EMBEDDING_NODE = "/model/embed_tokens/Gather"
_BUILDER_METHOD = {"rtn": "rtn", "k_quant": "k_quant"}


class LayerOverride(Model):
    """Decoder layers whose weights keep another precision than the recipe's body."""

    layers: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    weights: Precision


class LlmRecipe(Model):
    """How a causal LM's weights are stored: the body's MatMuls, the embedding, the lm_head."""

    weights: Literal["fp32", "fp16", "int8", "int4"] = "int4"
    algorithm: Literal["rtn", "k_quant", "hqq", "gptq"] = "rtn"
    block_size: Literal[16, 32, 64, 128, 256] = 32
    symmetric: bool = True
    # MatMulNBits' compute type: 4 = int8 activations (fastest on CPU), 1 = fp32.
    accuracy_level: Annotated[int, Field(ge=0, le=4)] = 4
    embeddings: Precision = "fp32"
    lm_head: Precision = "fp32"
    layer_overrides: list[LayerOverride] = Field(default_factory=list)

    @model_validator(mode="after")
    def _buildable(self) -> LlmRecipe:
        quantized = self.weights in ("int8", "int4")
        if not quantized and (self.embeddings != "fp32" or self.lm_head != "fp32"
                              or self.layer_overrides):
            raise ValueError(f"weights {self.weights} keeps the embedding, lm_head and every "
                             "layer in floating point")
        if self.embeddings == "int8" and self.lm_head != "int8":
            raise ValueError("embeddings int8 is the tied lm_head's int8 weights: set lm_head int8")
        if self.algorithm == "hqq" and (self.symmetric or self.embeddings != "fp32"):
            raise ValueError("hqq is asymmetric and keeps the embedding fp32: set symmetric "
                             "false and embeddings fp32")
        if self.algorithm in ("hqq", "gptq") and self.weights != "int4":
            raise ValueError(f"{self.algorithm} quantizes to int4: set weights int4")
        return self


class BuildRecord(Model):
    """What built a folder and how long it took, written beside the model."""

    recipe: LlmRecipe
    build_seconds: float
    builder_version: str


def build_genai_folder(hf_folder: Path, recipe: LlmRecipe, out: Path,
                       calibration: list[str] | None = None, *,
                       execution_provider: Literal["cpu", "cuda"] = "cpu") -> Path:
    """`out` as an onnxruntime-genai model folder of the HF causal LM in `hf_folder`, its
    weights stored as `recipe` says; `calibration` texts feed GPTQ (and only GPTQ). The
    build time and recipe go to `out/modelpress-build.json` (`read_build_record`)."""
    import onnxruntime_genai

    if recipe.algorithm == "gptq" and not calibration:
        raise InvalidInput("spec.data.calibration", "gptq needs calibration text")
    if recipe.weights == "fp16" and execution_provider == "cpu":
        raise InvalidInput("quantize.weights", "fp16 runs on cuda; on cpu use fp32")
    config = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if recipe.algorithm in ("hqq", "gptq"):
        run_model_builder(hf_folder, out, "fp32", execution_provider,
                          {"shared_embeddings": "false"})
        _quantize_builder_output(out, recipe, config, calibration or [])
    else:
        precision, options, target = _builder_arguments(recipe, config)
        run_model_builder(hf_folder, out, precision, execution_provider, options, target)
    record = BuildRecord(recipe=recipe, build_seconds=round(time.perf_counter() - started, 2),
                         builder_version=onnxruntime_genai.__version__)
    (out / BUILD_RECORD).write_text(json.dumps(record.to_wire(), indent=2), encoding="utf-8")
    return out


def read_build_record(folder: Path) -> BuildRecord:
    """The record `build_genai_folder` wrote into `folder`."""
    return BuildRecord.model_validate_json((folder / BUILD_RECORD).read_text(encoding="utf-8"))


def model_bytes(folder: Path) -> int:
    """Bytes of the ONNX model and its external data: what the weights cost on disk."""
    return sum(path.stat().st_size for path in folder.glob(f"{MODEL_FILE}*"))


# ----------------------------------------------------------------------------- the builder


def _layer_bits(recipe: LlmRecipe, layers: int) -> list[Precision]:
    """Each decoder layer's weight precision: the body's, unless an override names it."""
    body: Precision = "int8" if recipe.weights == "int8" else "int4"
    chosen = [body] * layers
    for override in recipe.layer_overrides:
        for layer in override.layers:
            if layer >= layers:
                raise InvalidInput("quantize.layerOverrides",
                                   f"layer {layer} does not exist; the model has {layers}")
            chosen[layer] = override.weights
    return chosen


def _node_overrides(recipe: LlmRecipe, layers: int, base: Precision) -> list[dict[str, Any]]:
    """The builder's per-node overrides: every MatMul whose precision is not `base`."""
    wanted = {f"/model/layers.{index}/{name}/MatMul": precision
              for index, precision in enumerate(_layer_bits(recipe, layers))
              for name in _LAYER_MATMULS}
    wanted[LM_HEAD_NODE] = recipe.lm_head
    overrides = []
    for node, precision in wanted.items():
        if precision == "fp32":
            overrides.append({"match": {"name": node}, "exclude": True})
        elif precision != base:
            overrides.append({"match": {"name": node}, "type": precision})
    return overrides


def _builder_arguments(recipe: LlmRecipe, config: dict[str, Any]
                       ) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """(precision, extra_options, target_options) for the builder."""
    tied = bool(config.get("tie_word_embeddings", False))
    if recipe.weights in ("fp32", "fp16"):
        return recipe.weights, {"shared_embeddings": str(tied).lower()}, None
    # A quantized embedding needs the int4 graph type (GatherBlockQuantized); int8 nodes are
    # then overrides, the int8 tied embedding reading the int8 lm_head's weights.
    overridden = {override.weights for override in recipe.layer_overrides}
    base: Precision = ("int4" if recipe.weights == "int4" or recipe.embeddings != "fp32"
                       or "int4" in overridden else "int8")
    share = tied and recipe.embeddings == recipe.lm_head
    if recipe.embeddings == "int8" and not share:
        raise InvalidInput("quantize.embeddings", "int8 embeddings need a model whose "
                                                  "embedding and lm_head are tied")
    weights = {"type": base, "block_size": recipe.block_size, "symmetric": recipe.symmetric,
               "method": _BUILDER_METHOD[recipe.algorithm],
               "accuracy_level": recipe.accuracy_level,
               "op_types": ["MatMul"] if recipe.embeddings == "fp32" else ["MatMul", "Gather"],
               "overrides": _node_overrides(recipe, int(config["num_hidden_layers"]), base)}
    options = {"shared_embeddings": str(share).lower()}
    return base, options, {"quant_config": {"io_dtype": "fp32", "weights": weights}}


def run_model_builder(hf_folder: Path, out: Path, precision: str, execution_provider: str,
                 options: dict[str, str], target: dict[str, Any] | None = None) -> None:
    """onnxruntime-genai's model builder, in this process (a child would import torch and
    transformers again: seconds per build). What it prints is kept for its error message."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="genai-builder-") as cache:
        try:
            with contextlib.redirect_stdout(printed), _quiet_quantizer():
                prepared = parse_extra_options(
                    "", str(hf_folder), str(out), precision, execution_provider, cache,
                    [f"{key}={value}" for key, value in options.items()], target_options=target)
                create_model("", str(hf_folder), str(out), precision, execution_provider, cache,
                             **prepared)
        except (ValueError, NotImplementedError, KeyError, OSError) as error:
            raise StepFailed("quantize", f"the onnxruntime-genai model builder failed: "
                                         f"{type(error).__name__}: {error}") from error


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """MatMulNBitsQuantizer logs a line per node at INFO; keep its warnings only."""
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quantizer_log.setLevel(level)


# ----------------------------------------------------------------------------- HQQ and GPTQ


def _quantize_builder_output(folder: Path, recipe: LlmRecipe, config: dict[str, Any],
                             calibration: list[str]) -> None:
    """Quantize the builder's fp32 graph in place with `MatMulNBitsQuantizer`: the int4 body
    with HQQ or GPTQ, then int8 nodes and an int4 embedding in MLAS passes of their own."""
    import onnx

    model = onnx.load(str(folder / MODEL_FILE))
    bits = _node_bits(recipe, int(config["num_hidden_layers"]))
    int4_nodes = [node for node, width in bits.items() if width == "int4"]
    other = [node.name for node in model.graph.node
             if node.op_type in ("MatMul", "Gather") and node.name not in int4_nodes]
    model = _quantize_int4_body(model, recipe, folder, calibration, _kv_shape(config),
                                exclude=other)
    int8_nodes = [node for node, width in bits.items() if width == "int8"]
    if int8_nodes:
        model = _mlas_pass(model, recipe, bits=8, include=int8_nodes, op_types=("MatMul",))
    if recipe.embeddings == "int4":
        model = _mlas_pass(model, recipe, bits=4, include=[EMBEDDING_NODE], op_types=("Gather",))
    for stale in folder.glob(f"{MODEL_FILE}*"):
        stale.unlink()
    onnx.save(model, str(folder / MODEL_FILE), save_as_external_data=True,
              location=f"{MODEL_FILE}.data", all_tensors_to_one_file=True)


def _node_bits(recipe: LlmRecipe, layers: int) -> dict[str, Precision]:
    bits: dict[str, Precision] = {f"/model/layers.{index}/{name}/MatMul": precision
                                  for index, precision in enumerate(_layer_bits(recipe, layers))
                                  for name in _LAYER_MATMULS}
    bits[LM_HEAD_NODE] = recipe.lm_head
    return bits


def _kv_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(key/value heads, head size) of one layer's KV cache, from the model's HF config."""
    heads = int(config["num_attention_heads"])
    head_size = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return int(config.get("num_key_value_heads") or heads), head_size


def _quantize_int4_body(model: onnx.ModelProto, recipe: LlmRecipe, folder: Path,
                        calibration: list[str], kv_shape: tuple[int, int],
                        exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if recipe.algorithm == "hqq":
        algo: Any = HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=4,
                                             op_types_to_quantize=("MatMul",))
    else:
        algo = GPTQWeightOnlyQuantConfig(
            calibration_data_reader=_calibration_reader(model, folder, calibration, kv_shape),
            block_size=recipe.block_size, perchannel=False, op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=recipe.block_size,
                                     is_symmetric=recipe.symmetric,
                                     accuracy_level=recipe.accuracy_level,
                                     nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",),
                                     algo_config=algo)
    quantizer.process()
    return quantizer.model.model


def _mlas_pass(model: onnx.ModelProto, recipe: LlmRecipe, *, bits: int, include: list[str],
               op_types: tuple[str, ...]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=recipe.block_size,
                                     is_symmetric=recipe.symmetric,
                                     accuracy_level=recipe.accuracy_level,
                                     nodes_to_include=include, op_types_to_quantize=op_types)
    quantizer.process()
    return quantizer.model.model


def _calibration_reader(model: onnx.ModelProto, folder: Path, texts: list[str],
                        kv_shape: tuple[int, int]) -> Any:
    """GPTQ's calibration inputs: each text as one prompt with an empty KV cache of
    `kv_shape` (heads, head size) per layer."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    past = [value.name for value in model.graph.input
            if value.name.startswith("past_key_values")]
    feeds = []
    for text in texts:
        ids = np.array([tokenizer(text, truncation=True, max_length=256)["input_ids"]],
                       dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        for name in past:
            feed[name] = np.zeros((1, kv_shape[0], 0, kv_shape[1]), dtype=np.float32)
        feeds.append(feed)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    return Reader()
