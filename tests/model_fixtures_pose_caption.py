"""Tiny random-weight VitPose, RT-DETR and BLIP checkpoints, saved like users' checkpoints.

Each builder constructs the real transformers class from a small config, saves model and
processor with `save_pretrained(directory)` and marks the directory as random weights, so
the labelers load them through the same path as real checkpoints. Seeds are fixed.
Used by tests and benchmarks/bench_labelers_pose_caption.py: `build_<x>(directory) -> str`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prism4m.labelers.weights import save_random_weights_marker

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

#: a few captions to train the tiny BLIP tokenizer on (its vocabulary, not its outputs, matters)
TOKENIZER_CORPUS = (
    "a man riding a horse on the beach", "a cat sitting on a red chair",
    "an astronaut in a white suit holding a flag", "two dogs playing in the grass",
    "a plate of food on a wooden table", "a photography of a street at night",
)


def _finish(model, processor, directory: str | Path, note: str) -> str:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    save_random_weights_marker(d, note=note)
    return str(d)


def build_vitpose(directory, num_keypoints: int = 17) -> str:
    """VitPoseForPoseEstimation: 2-layer ViT backbone on 64×48 crops, simple decoder."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(0)
    names = COCO_KEYPOINT_NAMES if num_keypoints == 17 else [f"kp{i}" for i in range(num_keypoints)]
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    cfg = VitPoseConfig(backbone_config=backbone, id2label=dict(enumerate(names)),
                        label2id={n: i for i, n in enumerate(names)})
    proc = VitPoseImageProcessor(size={"height": 64, "width": 48})
    return _finish(VitPoseForPoseEstimation(cfg), proc, directory, "tiny VitPose")


def build_rtdetr(directory, labels: tuple[str, ...] = ("person", "car")) -> str:
    """RTDetrForObjectDetection: tiny ResNet backbone, 1 decoder layer, 10 queries, 64×64 input."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(0)
    resnet = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    cfg = RTDetrConfig(backbone_config=resnet, encoder_hidden_dim=16, encoder_in_channels=[16, 16, 32],
                       encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, num_queries=10,
                       decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, decoder_layers=1,
                       decoder_attention_heads=2, num_denoising=0,
                       id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    proc = RTDetrImageProcessor(size={"height": 64, "width": 64})
    return _finish(RTDetrForObjectDetection(cfg), proc, directory, "tiny RT-DETR")


def train_tiny_bert_tokenizer(vocab_size: int = 120):
    """A WordPiece tokenizer trained here (BERT layout plus BLIP's [DEC] start token)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    return BertTokenizer(tokenizer_object=tok, bos_token="[DEC]", pad_token="[PAD]", unk_token="[UNK]",
                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def build_blip(directory) -> str:
    """BlipForConditionalGeneration: 2-layer ViT on 64×64 and 2-layer text decoder, local tokenizer."""
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor,
                              BlipTextConfig, BlipVisionConfig)

    torch.manual_seed(0)
    tok = train_tiny_bert_tokenizer()
    # initializer_range: with BLIP's defaults the text decoder barely attends to the image, so random
    # weights would caption every image alike and tests could not tell samples apart
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id,
                          pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id, initializer_range=0.3)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=16, initializer_range=0.02)
    cfg = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32,
                     image_text_hidden_size=32)
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok)
    return _finish(BlipForConditionalGeneration(cfg), proc, directory, "tiny BLIP")
