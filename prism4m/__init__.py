"""prism4m: raw images in, an aligned pre-tokenized multimodal 4M dataset out."""

__version__ = "0.1.0"
