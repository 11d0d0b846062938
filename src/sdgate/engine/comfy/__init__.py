"""The ComfyUI graph executor: a validated API-format prompt (``GraphRequest``) run on the engine.

``executor.run_graph`` orders the nodes the outputs need, runs each (or takes it from a small
per-engine cache of unchanged node outputs), reports ``executing``/``progress`` through the job's
control, and collects SaveImage/PreviewImage pictures into one ``EngineOutput``.

- ``values``: what flows along the links (model/CLIP/VAE handles, conditioning, latents, images);
  torch-free, so the null engine runs the same graphs.
- ``nodes``: the node implementations on the diffusers engine's own components (torch).
- ``ksampler``: KSampler / KSamplerAdvanced's denoising loop (torch).
- ``shapes``: the null engine's nodes: sizes only, blank pictures, no torch.
"""
