"""Trunk and block detection on the module names of real architectures (tiny configs, random init)."""

from __future__ import annotations

import pytest
import torch
from gradhealth.diagnostics.blocks import BlockStructure, find_blocks
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")


def _layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Paths and types of the modules that own parameters, as the engine lists layers."""
    rows = [
        (path, type(m).__name__)
        for path, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    ]
    return [p for p, _ in rows], [t for _, t in rows]


def _structure(model: nn.Module) -> tuple[BlockStructure, list[str]]:
    names, types = _layers(model)
    return find_blocks(names, types), names


def _block_names(structure: BlockStructure, trunk: int = 0) -> list[str]:
    return [b.name for b in structure.trunks[trunk].blocks]


def test_gpt2_trunk_is_transformer_h() -> None:
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=16, n_layer=3, n_head=2, n_positions=32)
    structure, names = _structure(transformers.GPT2LMHeadModel(cfg))
    assert [t.name for t in structure.trunks] == ["transformer.h"]
    assert _block_names(structure) == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    outside = {names[i] for i in structure.outside}
    assert {"transformer.wte", "transformer.wpe", "transformer.ln_f"} <= outside
    first = structure.trunks[0].blocks[0]
    assert [names[i] for i in first.layers][-1] == "transformer.h.0.mlp.c_proj"
    assert ("attn.c_attn", "Conv1D") in first.signature
    # blocks of one stack have the same kind
    assert len({b.signature for b in structure.trunks[0].blocks}) == 1


def test_llama_trunk_excludes_embeddings_and_head() -> None:
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2
    )
    structure, names = _structure(transformers.LlamaForCausalLM(cfg))
    assert [t.name for t in structure.trunks] == ["model.layers"]
    assert len(structure.trunks[0].blocks) == 4
    assert {names[i] for i in structure.outside} == {"model.embed_tokens", "model.norm", "lm_head"}


def test_bert_and_vit_encoder_layers() -> None:
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
        )
    )
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=16,
            patch_size=8,
        )
    )
    bert_structure, _ = _structure(bert)
    vit_structure, vit_names = _structure(vit)
    assert [t.name for t in bert_structure.trunks] == ["bert.encoder.layer"]
    assert len(bert_structure.trunks[0].blocks) == 3
    assert [t.name for t in vit_structure.trunks] == ["vit.layers"]  # transformers 5 spelling (4.x: vit.encoder.layer)
    assert "classifier" in {vit_names[i] for i in vit_structure.outside}


def test_t5_encoder_and_decoder_are_two_trunks() -> None:
    cfg = transformers.T5Config(
        vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=3, num_heads=2
    )
    structure, _ = _structure(transformers.T5ForConditionalGeneration(cfg))
    assert [t.name for t in structure.trunks] == ["encoder.block", "decoder.block"]
    assert all(len(t.blocks) == 3 for t in structure.trunks)
    # the per-block sub-stacks (block.{i}.layer.{j}) are inside blocks, not trunks of their own
    assert _block_names(structure, 1)[0] == "decoder.block.0"


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _ResNet(nn.Module):
    """torchvision's ResNet-18 layout and names: stem, layer1..layer4 of two blocks, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        widths = [8, 16, 32, 64]
        cin = 8
        for stage, width in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            setattr(self, f"layer{stage}", nn.Sequential(_Basic(cin, width, stride), _Basic(width, width, 1)))
            cin = width
        self.fc = nn.Linear(64, 10)


def test_resnet_stages_form_one_trunk() -> None:
    structure, names = _structure(_ResNet())
    assert [t.name for t in structure.trunks] == ["layer*"]
    assert _block_names(structure) == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert {names[i] for i in structure.outside} == {"conv1", "bn1", "fc"}
    downsampled = structure.trunks[0].blocks[2]
    assert [names[i] for i in downsampled.layers][-2:] == ["layer2.0.downsample.0", "layer2.0.downsample.1"]


def test_stacked_lstm_layers_are_blocks() -> None:
    class LSTMLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.lstm = nn.LSTM(8, 8, num_layers=3, batch_first=True)
            self.head = nn.Linear(8, 50)

    params = [name for name, _ in LSTMLM().named_parameters()]
    structure = find_blocks(params)
    assert [b.name for b in structure.trunks[0].blocks] == ["lstm.*_l0", "lstm.*_l1", "lstm.*_l2"]
    assert all(len(b.layers) == 4 for b in structure.trunks[0].blocks)
    assert {params[i] for i in structure.outside} == {"embed.weight", "head.weight", "head.bias"}


def test_no_trunk_without_repeated_indices() -> None:
    assert find_blocks(["inp", "norm", "head"]).trunks == ()
    assert find_blocks(["inp", "blocks.0.fc", "head"]).trunks == ()  # one block is not a stack
    assert find_blocks([]) == BlockStructure((), ())


def test_secondary_stack_must_be_comparable_in_length() -> None:
    names = [f"features.{i}" for i in range(0, 16, 2)] + ["classifier.0", "classifier.3"]
    structure = find_blocks(names)
    assert [t.name for t in structure.trunks] == ["features"]
    assert structure.outside == (8, 9)


def test_blocks_nested_in_stages_beat_the_stage_list() -> None:
    names = ["stem"] + [f"stages.{s}.blocks.{i}.conv" for s, n in enumerate([2, 2, 6, 2]) for i in range(n)] + ["head"]
    structure = find_blocks(names)
    assert [t.name for t in structure.trunks] == ["stages.*.blocks"]
    assert len(structure.trunks[0].blocks) == 12
    assert structure.outside == (0, 13)
