"""Preprocessing: any folder of images -> a clean captioned dataset folder.

Image operations (orientation, modes, alpha, resize, crop, split, focal crop, flip) are pure
functions over files; captioners (BLIP first) run in batches; `run_preprocess` ties them
together and reports through a job's event log. No Gradio here.
"""

from preprocessing.captioners import CaptionerError, build_tiny_blip, load_blip
from preprocessing.captions import CaptionItem, list_captions, set_caption
from preprocessing.images import IMAGE_SUFFIXES, ImageReadError, open_image
from preprocessing.job import PreprocessError, PreprocessResult, preprocess_job, run_preprocess
from preprocessing.options import PreprocessOptions

__all__ = [
    "IMAGE_SUFFIXES",
    "CaptionItem",
    "CaptionerError",
    "ImageReadError",
    "PreprocessError",
    "PreprocessOptions",
    "PreprocessResult",
    "build_tiny_blip",
    "list_captions",
    "load_blip",
    "open_image",
    "preprocess_job",
    "run_preprocess",
    "set_caption",
]
