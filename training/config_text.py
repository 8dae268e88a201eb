"""Plain-words labels and one-line help for every `TrainConfig` field.

One home for the wording, so the web form (labels and `info=`) and `app.py train --help` say the
same thing. A field missing here still works: the UI and CLI fall back to its name.
"""

FIELD_TEXT: dict[str, tuple[str, str | None]] = {
    # what to train, on what (the UI has its own pickers for these)
    "embedding": ("Embedding", "A name in the embeddings folder, or a path to an embedding file"),
    "dataset": ("Dataset", "A folder of images (+ .txt captions), or a name under data/datasets"),
    "model": ("Base model", "toy, tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id"),
    "template": ("Prompt template", "A file in textual_inversion_templates/ or data/templates, without .txt"),
    # basic
    "lr": ("Learning rate", "One rate, or rate:until-step pairs, e.g. 0.005:100, 1e-3:1000, 1e-5"),
    "lr_kind": ("Schedule", "cosine / linear: decay to the lowest rate"),
    "max_steps": ("Train until step", None),
    "batch_size": ("Batch size", None),
    "preview_every": ("Preview every N steps", "0 = no previews"),
    "save_every": ("Save a snapshot every N steps", "0 = only at the end"),
    "preview_prompts": ("Preview prompts", "One per line; empty = the template's first line"),
    "resolution": ("Training resolution (px)", None),
    # data
    "bucketing": ("Aspect-ratio buckets", "Train at each image's own shape, not a square crop"),
    "no_upscale": ("Never upscale small images", "With buckets: small images keep their size"),
    "shuffle_tags": ("Shuffle caption tags", "Comma-separated tags in a new order each step"),
    "alpha_weight": ("Weight the loss by transparency", "Transparent pixels count less (PNG with alpha)"),
    "repeats": ("Repeats per epoch", "Each image is used this many times per epoch"),
    "flip_p": ("Mirror chance", "0 to 1: chance an image is used mirrored"),
    "latent_sampling": ("Latent sampling", "once: one VAE sample per image; deterministic: the mean; "
                                            "random: a new sample every step"),
    "keep_tags": ("Keep first tags", "This many leading tags are never shuffled or dropped"),
    "tag_dropout": ("Tag dropout", "0 to 1: chance each tag is left out"),
    "bucket_step": ("Bucket step (px)", "Bucket sides are multiples of this"),
    "min_bucket": ("Smallest bucket side (px)", None),
    "max_bucket": ("Largest bucket side (px)", None),
    "filename_regex": ("Caption from file name (regex)", "For images without a .txt: keep the matches"),
    "join_string": ("Join matches with", None),
    # optimizer & schedule
    "more_steps": ("Or: train N more steps", "0 = use 'Train until step'"),
    "warmup_steps": ("Warm-up steps", "The rate rises from 0 over these steps"),
    "min_lr": ("Lowest learning rate", "Where cosine / linear end"),
    "grad_accum": ("Gradient accumulation", "Batches per update: effective batch = batch × this"),
    "optimizer": ("Optimizer", None),
    "weight_decay": ("Weight decay", "Keep 0 for embeddings: decay pulls vectors to 0"),
    "clip_mode": ("Gradient clipping", "value: each number; norm: the whole gradient's length"),
    "clip_value": ("Clip at", "Same syntax as the learning rate, e.g. 0.1 or 0.5:200, 0.1"),
    "seed": ("Seed", None),
    # text encoder & vectors
    "vector_shuffle": ("Vector shuffle", "Train with the vectors in shuffled order so each one stands on "
                                          "its own (multi-vector)"),
    "shuffle_prob": ("Shuffle chance", "0 to 1: share of steps that shuffle"),
    "clip_skip": ("CLIP skip", "1 = last text-encoder layer; 2 = the one before"),
    "density_weight": ("Density regulariser weight", "Pull the vectors towards where real word embeddings "
                                                      "lie (P+/XTI): keeps them editable; 0 = off, try 1e-3. "
                                                      "The training loss shown includes it"),
    # precision & speed
    "gradient_checkpointing": ("Gradient checkpointing", "Less GPU memory, slower steps"),
    "mixed_precision": ("Mixed precision", "auto: bf16/fp16 on a GPU, full precision on CPU"),
    # previews
    "preview_first": ("Preview before training too", "Previews of the untrained embedding at step 0, to "
                                                      "compare the later ones with"),
    "preview_steps": ("Preview sampling steps", None),
    "preview_cfg": ("Preview CFG scale", None),
    "preview_scheduler": ("Preview sampler", None),
    "preview_width": ("Preview width (px)", "0 = training resolution"),
    "preview_height": ("Preview height (px)", "0 = training resolution"),
    "preview_seeds": ("Preview seeds", "Comma separated: one image per seed and prompt"),
    "preview_negative": ("Preview negative prompt", None),
    # evaluation & health
    "tensorboard": ("Write TensorBoard logs", None),
    "eval_every": ("Evaluation loss every N steps", "Fixed images and noise, comparable over time; 0 = off"),
    "eval_images": ("Evaluation images", None),
    "nan_patience": ("Stop after N bad steps", "Steps in a row with a NaN/inf loss (each is skipped)"),
    "not_learning_steps": ("'Not learning' check after", "Warn if the vectors have not moved by this step; "
                                                          "0 = off"),
    "not_learning_threshold": ("'Not learning' threshold", "Relative change |v - v0| / |v0| that counts as "
                                                            "moved"),
    # CLIP scores, best step, auto-stop
    "score_every": ("CLIP scores every N steps", "Likeness and editability; each evaluation generates "
                                                 "(score prompts + edit prompts) × seeds images; 0 = off"),
    "clip_model": ("CLIP model", "A folder or file in data/models/clip, a cached hub id, or toy; empty = the "
                                 "first one found"),
    "score_prompts": ("Likeness prompts", "One per line, with [name]; their images are compared with the "
                                          "training images"),
    "edit_prompts": ("Edit prompts", "One per line, with [name]; their images are compared with the prompt "
                                     "text, [name] replaced by the class word"),
    "class_word": ("Class word", "Replaces [name] in the edit prompts' text; empty = the init text"),
    "score_seeds": ("Score seeds", "Comma separated: one image per seed and prompt"),
    "score_steps": ("Score sampling steps", None),
    "best_threshold": ("Best step: keep this share of editability", "0 to 1: the suggested step has the "
                                                                     "highest likeness among those keeping it"),
    "auto_stop": ("Auto-stop on", "Stop with a final snapshot when this score has not improved; off by default"),
    "auto_stop_patience": ("Auto-stop patience", "Evaluations in a row without improvement before stopping"),
    # snapshots
    "save_png_embeddings": ("Also save PNG embeddings", "A preview picture carrying the vectors"),
    "snapshot_formats": ("Snapshot formats", None),
    "run_name": ("Run folder name", "Empty = <embedding>-<date-time>"),
}
