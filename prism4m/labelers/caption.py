"""Captions (`caption`): a transformers image-to-text model, greedy or beam search.

`checkpoint` is an AutoModelForImageTextToText whose AutoProcessor takes `images` (and
optionally `text`) and whose `generate` returns token ids. BLIP
(Salesforce/blip-image-captioning-base or -large) is the tested family; other models of that
class that behave the same way (GIT, BLIP-2) should load unchanged but are untested here.
Generation is deterministic (no sampling): `num_beams` 1 is greedy decoding, more is beam
search; `min_new_tokens`..`max_new_tokens` bound the length (defaults: BLIP's own captioning
setup, 3 beams and 5 to 20 tokens). With `prompt` set, captioning is conditioned on that
text prefix ("a photography of"), and the prefix stays in the caption, as BLIP's
conditional captioning returns it.

Output (KEY.txt): the decoded caption without special tokens, UTF-8, stripped of leading
and trailing whitespace. A model that generates nothing but special tokens gives an empty
caption, which the label stage records as a failed sample (zero bytes mean invalid).
4M reads a .txt caption as one string for every crop (4M_FORMAT.md §1.5). Captions that
came with the source corpus are not this folder: they are the corpus's own text, kept by
ingest.
"""

from __future__ import annotations

from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig


class CaptionConfig(HFLabelerConfig):
    # defaults: BLIP's own captioning setup (beam search 3, 5 to 20 tokens)
    max_new_tokens: int = Field(20, ge=1, description="longest caption, in tokens")
    min_new_tokens: int = Field(5, ge=0, description="shortest caption, in tokens (stops one-word captions)")
    num_beams: int = Field(3, ge=1, description="beam width (1 = greedy); never sampled")
    prompt: str | None = Field(None, description="text prefix for conditional captioning (kept in the output)")


class CaptionLabeler(HFLabeler):
    name = "caption"
    Config = CaptionConfig
    model_class = "AutoModelForImageTextToText"
    processor_class = "AutoProcessor"
    example_checkpoint = "Salesforce/blip-image-captioning-base"
    default_resources = Resources(num_cpus=1, num_gpus=0.1, batch_size=16)

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        kwargs = {"images": [s.image for s in batch], "return_tensors": "pt"}
        if self.config.prompt:
            kwargs["text"] = [self.config.prompt] * len(batch)
        inputs = self.to_device(self.processor(**kwargs))
        ids = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens,
                                  min_new_tokens=self.config.min_new_tokens, num_beams=self.config.num_beams,
                                  do_sample=False)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [t.strip().encode("utf-8") for t in texts]
