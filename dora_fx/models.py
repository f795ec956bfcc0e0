"""The model zoo used by the CLI, tests and benchmarks: small built-in models, and Hugging Face
architectures built from configs with random weights (nothing is downloaded).

``build(name, size="small"|"full")`` returns ``(model, example_inputs)`` in eval mode. "full" is
the published configuration (GPT-2 small: 12 layers, 768 wide; MobileNetV2 1.0 at 224x224);
"small" is a shrunken config of the same architecture for fast tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["build", "MODELS", "HF_MODELS", "MLP", "ResidualCNN", "TinyTransformer"]

Built = tuple[nn.Module, tuple[Any, ...]]


class MLP(nn.Module):
    def __init__(self, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResidualCNN(nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[_ResidualBlock(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(torch.relu(self.stem(x)))
        return self.head(y.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """Embedding, pre-norm encoder layers with scaled_dot_product_attention, a head; returns a
    dict so the output pytree is exercised."""

    def __init__(self, vocab: int = 100, width: int = 32, heads: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([_EncoderLayer(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        return {"logits": self.head(h), "pooled": h.mean(dim=1)}


class _EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out(attended.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.norm2(x))


def _tokens(vocab: int, batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def _image(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _gpt2(size: str, batch: int) -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    if size == "full":
        config = GPT2Config(use_cache=False)
        seq = 128
    else:
        config = GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64, use_cache=False,
            bos_token_id=0, eos_token_id=0,
        )
        seq = 16
    return GPT2LMHeadModel(config), (_tokens(config.vocab_size, batch, seq),)


def _llama(size: str, batch: int) -> Built:
    from transformers import LlamaConfig, LlamaForCausalLM

    if size == "full":  # a small Llama: 8 layers, 512 wide, GQA
        config = LlamaConfig(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=32000, use_cache=False,
        )
        seq = 128
    else:
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, use_cache=False, max_position_embeddings=64,
        )
        seq = 16
    return LlamaForCausalLM(config), (_tokens(config.vocab_size, batch, seq),)


def _bert(size: str, batch: int) -> Built:
    from transformers import BertConfig, BertModel

    if size == "full":
        config, seq = BertConfig(), 128
    else:
        config = BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=512, max_position_embeddings=64,
        )
        seq = 16
    return BertModel(config), (_tokens(config.vocab_size, batch, seq),)


def _vit(size: str, batch: int) -> Built:
    from transformers import ViTConfig, ViTModel

    if size == "full":
        config, image = ViTConfig(image_size=224), 224
    else:
        config = ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8,
        )
        image = 32
    return ViTModel(config), (_image(batch, image),)


def _mobilenetv2(size: str, batch: int) -> Built:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    image = 224 if size == "full" else 64
    depth_multiplier = 1.0 if size == "full" else 0.35
    config = MobileNetV2Config(depth_multiplier=depth_multiplier, image_size=image)
    return MobileNetV2ForImageClassification(config), (_image(batch, image),)


def _resnet(size: str, batch: int) -> Built:
    from transformers import ResNetConfig, ResNetForImageClassification

    if size == "full":  # ResNet-50
        config, image = ResNetConfig(), 224
    else:
        config = ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
            layer_type="basic",
        )
        image = 64
    return ResNetForImageClassification(config), (_image(batch, image),)


def _builtin(factory: Callable[[], nn.Module], make_input: Callable[[int], torch.Tensor]):
    def build_builtin(size: str, batch: int) -> Built:
        torch.manual_seed(0)
        return factory(), (make_input(batch),)

    return build_builtin


HF_MODELS: dict[str, Callable[[str, int], Built]] = {
    "gpt2": _gpt2,
    "bert": _bert,
    "vit": _vit,
    "mobilenetv2": _mobilenetv2,
    "resnet": _resnet,
    "llama": _llama,
}

MODELS: dict[str, Callable[[str, int], Built]] = {
    "mlp": _builtin(MLP, lambda b: torch.randn(b, 64, generator=torch.Generator().manual_seed(0))),
    "cnn": _builtin(ResidualCNN, lambda b: _image(b, 16)),
    "transformer": _builtin(TinyTransformer, lambda b: _tokens(100, b, 12)),
    **HF_MODELS,
}


def build(name: str, size: str = "small", batch: int = 2) -> Built:
    """A model in eval mode and example inputs for it; weights are random and seeded."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if size not in ("small", "full"):
        raise ValueError(f"size must be 'small' or 'full', got {size!r}")
    torch.manual_seed(0)
    model, inputs = MODELS[name](size, batch)
    return model.eval(), inputs
