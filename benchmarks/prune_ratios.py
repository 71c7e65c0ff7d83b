"""What a structured `sparsity` removes: the ratio of channels / heads / neurons against the
parameter reduction it produces, measured with the prune step's own code.

    python benchmarks/prune_ratios.py [--ratios 0.25 0.5 0.75] [--scope global]

Models: the builtin digits CNN and MiniLM-L6 with their trained weights, a BERT-tiny shaped
classifier (2 layers, hidden 128, 2 heads, FFN 512, 30522-word vocabulary) and a ResNet-18
shaped classifier (randomly initialised: the counts do not depend on training, only which
layers a global ranking takes from does). Prints a markdown table (docs/pruning.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modelpress.components import zoo
from modelpress.components.prune import prune_record, removed_structure, structure_figures
from modelpress.components.prune_structured import count_units, prune_structured
from modelpress.records import PruneRecord


class _Logits(torch.nn.Module):
    """A transformers model as prune sees it: tensors in, the first output out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs, return_dict=False)[0]


@dataclass(frozen=True)
class Subject:
    name: str
    build: Callable[[], torch.nn.Module]
    example: tuple[torch.Tensor, ...]


def _digits_cnn() -> torch.nn.Module:
    module = zoo.digits_cnn()
    module.load_state_dict(zoo.pretrained_state("digits-cnn"))
    return module.eval()


def _minilm() -> torch.nn.Module:
    module = zoo.minilm_l6()
    module.load_state_dict(zoo.pretrained_state("minilm-l6"))
    return module.eval()


def _bert_tiny() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, num_labels=2, attn_implementation="eager")
    return _Logits(BertForSequenceClassification(config))


def _resnet18() -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], embedding_size=64,
                          hidden_sizes=[64, 128, 256, 512], num_labels=10)
    return _Logits(ResNetForImageClassification(config))


_TOKENS = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.long))
SUBJECTS = (
    Subject("digits-cnn (builtin, trained)", _digits_cnn, (torch.zeros(2, 1, 8, 8),)),
    Subject("ResNet-18 shape (HF ResNet)", _resnet18, (torch.zeros(2, 3, 64, 64),)),
    Subject("BERT-tiny shape (HF BERT classifier)", _bert_tiny, _TOKENS),
    Subject("MiniLM-L6 (builtin, trained)", _minilm, _TOKENS),
)


def _parameters(module: torch.nn.Module, skip_embeddings: bool = False) -> int:
    return sum(p.numel() for name, p in module.named_parameters()
               if not (skip_embeddings and "embeddings" in name))


def measure(subject: Subject, ratio: float, scope: str) -> tuple[PruneRecord, float]:
    """The prune record of one structured prune at `ratio`, and the reduction of the
    parameters outside the embeddings (which structured pruning leaves whole)."""
    torch.manual_seed(0)
    module = subject.build()
    before, body_before = _parameters(module), _parameters(module, skip_embeddings=True)
    units = count_units(module)
    prune_structured(module, subject.example, ratio, scope)
    record = prune_record(module, before, structure_figures(units, count_units(module)))
    return record, 1 - _parameters(module, skip_embeddings=True) / body_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--scope", choices=["global", "layer"], default="global")
    arguments = parser.parse_args()
    print(f"scope: {arguments.scope}\n")
    print("| model | sparsity | removed | parameters before → after | parameter reduction "
          "| outside embeddings |")
    print("|---|---|---|---|---|---|")
    for subject in SUBJECTS:
        for ratio in arguments.ratios:
            record, body = measure(subject, ratio, arguments.scope)
            print(f"| {subject.name} | {ratio:g} | {', '.join(removed_structure(record))} "
                  f"| {record.parameters_before:,} → {record.parameters:,} "
                  f"| {record.parameter_reduction:.1%} | {body:.1%} |")


if __name__ == "__main__":
    main()
