"""Training cuts each batch's token inputs after the last position any of its texts needs
(modelio.without_trailing_padding), and that changes nothing a model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelpress.components.modelio import without_trailing_padding
from modelpress.components.training import BATCH_SIZE, TrainingPlan, epoch_batches, fine_tune


def _batch(masks: list[list[int]]) -> dict[str, torch.Tensor]:
    mask = torch.tensor(masks)
    return {"input_ids": (torch.arange(mask.numel()).reshape(mask.shape) + 5) * mask,
            "attention_mask": mask}


def test_right_padding_is_cut_to_the_longest_text_of_the_batch() -> None:
    cut = without_trailing_padding(_batch([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]))
    assert cut["attention_mask"].shape == (2, 3)
    assert cut["input_ids"].tolist() == [[5, 6, 0], [11, 12, 13]]


def test_left_padding_and_inputs_without_a_mask_are_kept() -> None:
    left = _batch([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert without_trailing_padding(left)["input_ids"].shape == (2, 4)
    pixels = {"pixel_values": torch.zeros(2, 3, 4, 4)}
    assert without_trailing_padding(pixels)["pixel_values"].shape == (2, 3, 4, 4)


def test_a_bert_encoder_gives_the_same_embedding_without_the_padding() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    batch = _batch([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])
    batch["input_ids"] = batch["input_ids"] % 64
    with torch.no_grad():
        full = model(**batch).last_hidden_state[:, :3]
        cut = model(**without_trailing_padding(batch)).last_hidden_state
    assert cut.shape[1] == 3
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


class _MeanEmbedding(torch.nn.Module):
    """Embeds tokens and averages them over the mask; records the widths it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(32, 4)
        self.widths: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.widths.append(input_ids.shape[1])
        weights = attention_mask.unsqueeze(-1).float()
        return (self.embedding(input_ids) * weights).sum(1) / weights.sum(1)


def test_fine_tune_feeds_batches_without_the_datasets_padding() -> None:
    rows, width = 130, 12  # three batches of at most 64
    mask = np.zeros((rows, width), dtype=np.int64)
    mask[:, :3] = 1
    mask[0] = 1  # one long text: only the batch that holds it needs the whole width
    train = {"input_ids": (np.arange(rows * width).reshape(rows, width) % 32) * mask,
             "attention_mask": mask}
    teacher, student = _MeanEmbedding(), _MeanEmbedding()
    fine_tune(student, teacher, train, TrainingPlan(task="embedding", epochs=1,
                                                    inputs=["input_ids", "attention_mask"]))
    assert teacher.widths == [12]  # the teacher's targets: one chunk of 256 rows
    assert sorted(student.widths) == [3, 3, 12]


def test_texts_are_batched_with_others_of_about_their_length() -> None:
    torch.manual_seed(0)
    rows, width = 640, 40
    lengths = torch.randint(1, width + 1, (rows,))
    mask = (torch.arange(width) < lengths[:, None]).long()
    batches = epoch_batches(rows, mask)
    assert sorted(torch.cat(batches).tolist()) == list(range(rows))  # each row once
    assert all(len(batch) <= BATCH_SIZE for batch in batches)
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    shuffled = sum(len(batch) * int(lengths[batch].max())
                   for batch in torch.randperm(rows).split(BATCH_SIZE))
    assert padded < 0.7 * shuffled  # lengths uniform in 1..40: about half the positions
