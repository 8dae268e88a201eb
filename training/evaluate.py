"""A repeatable evaluation loss: the same images, prompts, noise and timesteps every time.

The training loss is one noisy sample per step (random timestep, random noise), so its curve
says little about which step is best. This loss fixes every random choice once, so two calls
with the same vectors give the same number and a lower number means the vectors explain the
training images better. It is also the proof, in the tests, that training really learns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import torch

from training.dataset import PromptBuilder
from training.loss import denoise_loss, sdxl_time_ids


class Evaluator:
    """Built once per run; `loss(vectors)` runs without gradients."""

    def __init__(
        self,
        model,
        encoder,
        noise_scheduler,
        latents: Sequence[torch.Tensor],
        prompts: Sequence[str],
        name: str,
        *,
        plan,
        seed: int,
        timesteps_per_image: int = 4,
        added_time_ids: Sequence[torch.Tensor | None] | None = None,
        at_timesteps: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    ):
        """`at_timesteps`: a timed kind's vectors at a timestep (the trainer's `StepContext.at_timesteps`)."""
        self.model = model
        self.encoder = encoder
        self.noise_scheduler = noise_scheduler
        self.name = name
        self.plan = plan
        self.at_timesteps = at_timesteps
        gen = torch.Generator(device="cpu").manual_seed(seed + 7919)
        steps = noise_scheduler.config.num_train_timesteps
        # Timesteps spread evenly over the whole range, the same for every image.
        ts = [int((k + 0.5) * steps / timesteps_per_image) for k in range(timesteps_per_image)]
        self.items = []
        for i, (lat, prompt) in enumerate(zip(latents, prompts, strict=True)):
            time_ids = added_time_ids[i] if added_time_ids is not None else None
            for t in ts:
                noise = torch.randn(lat.shape, generator=gen)
                self.items.append((lat, prompt, t, noise, time_ids))
        self.tokenized = [encoder.tokenize([p]) for _, p, *_ in self.items]

    @torch.no_grad()
    def loss(self, vectors: Mapping[str, torch.Tensor]) -> float:
        total = 0.0
        device = self.plan.device
        for (lat, prompt, t, noise, time_ids), tp in zip(self.items, self.tokenized, strict=True):
            with self.plan.autocast():
                vecs = vectors if self.at_timesteps is None else self.at_timesteps(vectors, torch.tensor([t]))
                cond = self.encoder.encode([prompt], {self.name: vecs}, tokenized=tp)
                loss = denoise_loss(
                    self.model, self.noise_scheduler, lat[None].to(device), noise[None].to(device),
                    torch.tensor([t], device=device), cond, time_ids=None if time_ids is None else time_ids[None],
                )
            total += float(loss)
        return total / max(1, len(self.items))


def build_evaluator(config, model, encoder, noise_scheduler, cache, records, lines, name, opts, plan, *,
                    at_timesteps=None) -> Evaluator:
    """The run's evaluator: the first `eval_images` images with prompts built by a generator of its
    own (so evaluation never shifts the training prompts' random stream)."""
    count = min(config.eval_images, len(records))
    builder = PromptBuilder(lines, name, opts, random.Random(config.seed + 31337))
    prompts = [builder.build(records[i].caption) for i in range(count)]
    latents = [cache.entries[(i, False)].mean for i in range(count)]
    time_ids = None
    if model.family == "sdxl":
        time_ids = [sdxl_time_ids([(records[i].height, records[i].width)], lat.shape[-2:], model.vae_scale_factor,
                                  plan.device)[0] for i, lat in enumerate(latents)]
    return Evaluator(model, encoder, noise_scheduler, latents, prompts, name, plan=plan, seed=config.seed,
                     added_time_ids=time_ids, at_timesteps=at_timesteps)
