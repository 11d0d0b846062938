"""``sdgate demo``: train and evaluate the built-in demo model (``sdgate-demo-shapes``).

Torch is imported inside the commands, so importing this module stays light.
Exit codes: 0 ok (for ``eval``: every target met, or ``--no-check``), 1 targets missed, 2 usage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The built-in demo model: train and evaluate it.", no_args_is_help=True)

DEFAULT_CKPT = Path(".train/ckpt")
SMOKE_CKPT = Path(".train/smoke")


@app.command()
def train(
    ckpt_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint folder; resumed if present. [default: .train/ckpt]")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write the pipeline folder here when done. [default: none]")
    ] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A tiny end-to-end run for CI.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seeds data, noise and initial weights.")] = 0,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps. [default: 4000]")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="UNet steps. [default: 20000]")] = None,
    vae_minutes: Annotated[float | None, typer.Option(help="Stop the VAE phase after this long.")] = None,
    unet_minutes: Annotated[float | None, typer.Option(help="Stop the UNet phase after this long.")] = None,
    vae_batch: Annotated[int | None, typer.Option(help="VAE batch. [default: 32]")] = None,
    unet_batch: Annotated[int | None, typer.Option(help="UNet batch. [default: 128]")] = None,
    unet_lr: Annotated[float | None, typer.Option(help="UNet + text encoder learning rate.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up steps (also after a resume).")] = None,
    large_every: Annotated[
        int | None, typer.Option(help="Train at 512 every N-th UNet step (else 256). [default: 3]")
    ] = None,
    workers: Annotated[int, typer.Option(help="Data loader processes (0: in the main process).")] = 0,
    light: Annotated[bool, typer.Option("--light", help="Checkpoints keep only fp16 EMA weights.")] = False,
) -> None:
    """Train (or resume) the demo model: the VAE, then the UNet with the text encoder."""
    import dataclasses

    from sdgate.demo import train as tr

    base = tr.SMOKE if smoke else tr.TrainConfig()
    overrides = {
        "vae_steps": vae_steps, "unet_steps": unet_steps, "vae_minutes": vae_minutes,
        "unet_minutes": unet_minutes, "vae_batch": vae_batch, "unet_batch": unet_batch,
        "unet_lr": unet_lr, "warmup": warmup, "large_every": large_every,
    }
    cfg = dataclasses.replace(
        base, seed=seed, workers=workers, light_checkpoint=light,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    folder = ckpt_dir or (SMOKE_CKPT if smoke else DEFAULT_CKPT)  # a smoke run never resumes a real one
    state = tr.train(folder, cfg, device=device, export_to=export, log=typer.echo)
    typer.echo(json.dumps({"phase": state["phase"], "step": state["step"], "seconds": state["seconds"]}))


@app.command("eval")
def eval_(
    weights: Annotated[
        Path | None, typer.Option(help="Pipeline folder. [default: the shipped sdgate-demo-shapes]")
    ] = None,
    n_one: Annotated[int, typer.Option(help="Held-out captions with one shape.")] = 200,
    n_two: Annotated[int, typer.Option(help="Held-out captions with two shapes.")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 512,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 20,
    sampler: Annotated[str, typer.Option(help="euler, euler_a, dpmpp_2m_karras, ddim.")] = "euler",
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 4.0,
    batch: Annotated[int, typer.Option(help="Prompts per pipeline call.")] = 8,
    img2img: Annotated[int, typer.Option(help="Also check img2img on this many images.")] = 0,
    inpaint: Annotated[int, typer.Option(help="Also check inpainting on this many images.")] = 0,
    time_images: Annotated[int, typer.Option(help="Also time this many single images (batch 1).")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    check: Annotated[bool, typer.Option(help="Exit 1 when a target is missed.")] = True,
) -> None:
    """Generate from held-out captions and score the images with the deterministic analyser."""
    import dataclasses

    from sdgate.demo import evaluate as ev
    from sdgate.demo import model as dm

    if sampler not in ev.SAMPLERS:
        typer.echo(f"UsageError: unknown sampler {sampler!r}; one of {', '.join(ev.SAMPLERS)}", err=True)
        raise typer.Exit(2)
    pipe = dm.load_pipeline(weights, device=device)
    settings = ev.EvalSettings(n_one=n_one, n_two=n_two, size=size, steps=steps, sampler=sampler, cfg=cfg,
                               batch=batch, n_img2img=img2img, n_inpaint=inpaint)
    report = ev.evaluate(pipe, settings)
    if time_images:
        report.single_image = ev.seconds_per_image(pipe, size=size, steps=steps, cfg=cfg, runs=time_images)
    if as_json:
        body = dataclasses.asdict(report)
        body["passed"] = report.passed()
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(report.table())
        typer.echo("targets met" if report.passed() else "targets missed")
    if check and not report.passed():
        raise typer.Exit(1)


@app.command("train-controlnet")
def train_controlnet(
    ckpt_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint folder; resumed if present. [default: .train/controlnet]")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Write the ControlNet folder here at each checkpoint. [default: none]")
    ] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A tiny end-to-end run for CI.")] = False,
    seed: Annotated[int, typer.Option(help="Seeds data, noise and initial weights.")] = 0,
    minutes: Annotated[float | None, typer.Option(help="Stop after this long. [default: 25]")] = None,
    steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    batch: Annotated[int | None, typer.Option(help="Scenes per step. [default: 8]")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate. [default: 5e-4]")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads. [default: 2]")] = None,
) -> None:
    """Train (or resume) the demo canny ControlNet on CPU, the demo model frozen."""
    import dataclasses

    from sdgate.demo import controlnet_train as ct

    base = ct.SMOKE if smoke else ct.ControlTrainConfig()
    overrides = {"minutes": minutes, "steps": steps, "batch": batch, "lr": lr, "threads": threads}
    cfg = dataclasses.replace(base, seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    folder = ckpt_dir or Path(".train/smoke-controlnet" if smoke else ".train/controlnet")
    state = ct.train(folder, cfg, export_to=export, log=typer.echo)
    typer.echo(json.dumps({"step": state["step"], "seconds": round(state["seconds"], 1)}))
