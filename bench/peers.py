"""The peers a user would pick instead of this package, written or configured as their authors document them.

- ResNet-50: torchvision's `resnet50()` and one step of its reference training loop
  (pytorch/vision `references/classification/train.py`: CrossEntropyLoss, SGD lr 0.1 momentum 0.9 wd 1e-4,
  `--amp` for mixed precision). torchvision does not import beside torch 2.13 here, so `TorchvisionResNet50`
  is the same network in plain PyTorch (same layers, strides, initialisation and parameter count,
  25,557,032), independent of our model.py. Defaults: fp32, NCHW. Best documented settings: autocast
  (bf16 on CPU; fp16 with a GradScaler on GPU, as `--amp`) and channels_last (PyTorch performance guide).
- BERT-Large: Hugging Face transformers `BertForPreTraining` (pinned in the `bench` extra) at random
  initialisation, as its Trainer drives it: MLM labels at every position (-100 where not masked), AdamW
  (fused, the Trainer's default optimizer with torch >= 2.8), gradient clipping at 1.0. Defaults: fp32 and
  the library's default attention (SDPA in transformers 5). Best documented settings: bf16 autocast
  (`TrainingArguments(bf16=True)`) and `attn_implementation="sdpa"`.
- ImageNet decode and augmentation: torchvision's RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor
  + Normalize on a PIL image, i.e. a full-size decode, PIL crop and bilinear resize, in plain PIL and torch.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..common.data import imagenet


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride here: torchvision's "v1.5"
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet50(nn.Module):
    """torchvision.models.resnet50(): Kaiming-normal (fan_out) convs, BN 1/0, default Linear init."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, c_in = [], 64
        for i, blocks in enumerate((3, 4, 6, 3)):
            width = 64 * 2**i
            stage = []
            for b in range(blocks):
                stage.append(_Bottleneck(c_in, width, 2 if b == 0 and i > 0 else 1))
                c_in = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_step(images: torch.Tensor, labels: torch.Tensor, device: torch.device, *, best: bool):
    """-> (model, forward_backward(), update()): one training step of torchvision's reference loop on the
    given batch, as two closures: its forward-backward (autocast forward and loss, zero_grad, backward, in
    the reference's order) and its update (the scaler's step and update)."""
    memory = torch.channels_last if best else torch.contiguous_format
    model = TorchvisionResNet50().to(device, memory_format=memory)
    images = images.to(device).contiguous(memory_format=memory)
    labels = labels.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=best and half == torch.float16)

    def forward_backward():
        with torch.autocast(device.type, dtype=half, enabled=best):
            loss = criterion(model(images), labels)
        optimizer.zero_grad()
        scaler.scale(loss).backward()

    def update():
        scaler.step(optimizer)
        scaler.update()

    return model, forward_backward, update


def hf_bert(*, layers: int, hidden: int, heads: int, intermediate: int, vocab: int, seq_len: int,
            device: torch.device, best: bool):
    """transformers' BertForPreTraining -> (model, forward_backward(batch), update(), the attention
    implementation the library chose). A batch is in our loader's padded format, moved to the device and
    given MLM labels (-100 where nothing is masked) once, on first use, as HF's data collator would."""
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=seq_len,
                        **({"attn_implementation": "sdpa"} if best else {}))
    model = BertForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    ready: dict[int, dict] = {}

    def prepared(batch):
        if id(batch) not in ready:
            b = {k: v.to(device) for k, v in batch.items()}
            labels = torch.full_like(b["input_ids"], -100)  # the MLM loss only where a token was masked
            rows = torch.arange(labels.shape[0], device=device)[:, None].expand_as(b["masked_lm_positions"])
            real = b["masked_lm_weights"] > 0
            labels[rows[real], b["masked_lm_positions"][real]] = b["masked_lm_ids"][real]
            ready[id(batch)] = {**b, "labels": labels}
        return ready[id(batch)]

    def forward_backward(batch):
        b = prepared(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=best):
            out = model(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"],
                        labels=b["labels"], next_sentence_label=b["next_sentence_labels"])
        out.loss.backward()

    def update():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return model, forward_backward, update, model.config._attn_implementation


_MEAN = torch.tensor([m / 255 for m in imagenet.MEAN]).view(3, 1, 1)
_STD = torch.tensor([s / 255 for s in imagenet.STD]).view(3, 1, 1)


def torchvision_train_transform(img: Image.Image, size: int = 224) -> torch.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip() + ToTensor() + Normalize() on a PIL image, as
    torchvision applies them: full decode, crop, bilinear resize, flip, to float in [0, 1], normalise."""
    img = img.convert("RGB")
    left, top, w, h = imagenet.random_crop_box(*img.size)  # the same sampling rule as torchvision's get_params
    img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if torch.rand(()) < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    return (x - _MEAN) / _STD
