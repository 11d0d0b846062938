"""k-diffusion's per-step options on diffusers schedulers: eta, churn and noise scale.

A1111 runs its samplers through k-diffusion, whose loops take ``eta`` (ancestral noise),
``s_churn`` / ``s_tmin`` / ``s_tmax`` (Karras churn) and ``s_noise`` (noise scale). diffusers'
schedulers take few of these from its pipelines, so each class here is a stock scheduler whose
``step`` applies the job's values (set on the instance, one scheduler per pipeline call);
``APPLIES`` names what each honours, and ``schedulers.build_scheduler`` notes the rest.
"""

from __future__ import annotations

import math
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import (
    EulerDiscreteScheduler,
    EulerDiscreteSchedulerOutput,
)
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor


class _Tunable:
    """Sampler options set on one scheduler instance per job; ``APPLIES`` names those it honours."""

    APPLIES: frozenset[str] = frozenset()
    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0


class EulerChurnScheduler(_Tunable, EulerDiscreteScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """Euler with A1111's Karras churn (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).

    diffusers' Euler step implements k-diffusion's churn but only when the caller passes the values,
    which its pipelines never do; this passes the job's. As in diffusers, the model is evaluated
    at sigma before the churn noise is added (k-diffusion evaluates at the raised sigma_hat).
    """

    APPLIES = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, ...]:
        return super().step(  # type: ignore[no-any-return]
            model_output,
            timestep,
            sample,
            s_churn=self.s_churn,
            s_tmin=self.s_tmin,
            s_tmax=self.s_tmax,
            s_noise=self.s_noise,
            generator=generator,  # type: ignore[arg-type]
            return_dict=return_dict,
        )


class _SecondOrderChurn(_Tunable):
    """k-diffusion's churn for Heun and DPM2 (``sample_heun``, ``sample_dpm_2``): at each step whose
    sigma lies in [s_tmin, s_tmax], noise raises it to ``sigma_hat = sigma * (1 + gamma)``, with
    ``gamma = min(s_churn / steps, sqrt(2) - 1)``, and both of the step's updates start from there.

    diffusers' steps read the step's sigma from ``self.sigmas`` (both calls of a step read the same
    slot), so while a churned step runs that slot holds sigma_hat. As for Euler, the model is
    evaluated before the noise is added, at the scheduled sigmas (midpoints included). Without
    churn the stock step runs untouched.
    """

    APPLIES = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})
    _raised: tuple[int, torch.Tensor] | None = None  # (slot, sigma_hat) of the step in progress

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> Any:
        parent: Any = super()
        if self.step_index is None:  # type: ignore[attr-defined]
            self._init_step_index(timestep)  # type: ignore[attr-defined]
        first = bool(self.state_in_first_order)  # type: ignore[attr-defined]
        if first:
            self._raised = None
            sample = self._churn(sample, generator)
        if self._raised is None:
            return parent.step(model_output, timestep, sample, return_dict=return_dict)
        slot, sigma_hat = self._raised
        sigmas: torch.Tensor = self.sigmas  # type: ignore[attr-defined]
        scheduled = sigmas[slot].clone()
        sigmas[slot] = sigma_hat
        try:
            return parent.step(model_output, timestep, sample, return_dict=return_dict)
        finally:
            sigmas[slot] = scheduled
            if not first:
                self._raised = None

    def _churn(self, sample: torch.Tensor, generator: Any) -> torch.Tensor:
        slot = int(self.step_index)  # type: ignore[attr-defined]
        sigma = self.sigmas[slot]  # type: ignore[attr-defined]
        steps = self.num_inference_steps  # type: ignore[attr-defined]
        inside = self.s_tmin <= float(sigma) <= self.s_tmax
        gamma = min(self.s_churn / steps, 2**0.5 - 1) if inside and steps else 0.0
        if gamma <= 0:
            return sample
        sigma_hat = sigma * (gamma + 1)
        noise = randn_tensor(sample.shape, dtype=sample.dtype, device=sample.device, generator=generator)
        self._raised = (slot, sigma_hat)
        return sample + noise * self.s_noise * (sigma_hat**2 - sigma**2) ** 0.5


class HeunChurnScheduler(_SecondOrderChurn, HeunDiscreteScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """Heun with A1111's ``s_churn``, ``s_tmin``, ``s_tmax`` and ``s_noise``."""


class DPM2ChurnScheduler(_SecondOrderChurn, KDPM2DiscreteScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """DPM2 with A1111's ``s_churn``, ``s_tmin``, ``s_tmax`` and ``s_noise``."""


class DPM2AncestralScheduler(_Tunable, KDPM2AncestralDiscreteScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """DPM2 a with A1111's ``eta`` and ``s_noise`` (diffusers fixes eta at 1, s_noise at 1).

    k-diffusion's ``get_ancestral_step(sigma, sigma_next, eta)`` gives the up and down sigmas, and the
    midpoint is log-halfway to sigma_down; the step noise is ``noise * s_noise * sigma_up``, so
    scaling the up sigmas by s_noise is the same thing.
    """

    APPLIES = frozenset({"eta", "s_noise"})

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        if self.eta != 1.0 or self.s_noise != 1.0:
            self.ancestral_sigmas()

    def ancestral_sigmas(self) -> None:
        """Recompute the up / down / midpoint sigmas from ``self.sigmas`` for eta and s_noise."""
        sigmas = torch.cat([self.sigmas[:1], self.sigmas[1:-1:2]])  # undo the interleave
        nxt = sigmas.roll(-1)
        nxt[-1] = 0.0
        up = torch.minimum(nxt, self.eta * (nxt**2 * (sigmas**2 - nxt**2) / sigmas**2) ** 0.5)
        down = (nxt**2 - up**2) ** 0.5
        down[-1] = 0.0
        mid = sigmas.log().lerp(down.log(), 0.5).exp()
        mid[-2:] = 0.0
        up = up * self.s_noise

        def interleave(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])

        self.sigmas_interpol = interleave(mid)
        self.sigmas_up = interleave(up)
        self.sigmas_down = interleave(down)


class DPMSolverSDENoiseScheduler(_Tunable, diffusers.DPMSolverSDEScheduler):  # type: ignore[misc,name-defined]
    """DPM++ SDE with the job's ``s_noise`` (diffusers' step takes it; its pipelines never pass it)."""

    APPLIES = frozenset({"s_noise"})

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        return super().step(  # type: ignore[misc]
            model_output, timestep, sample, return_dict=return_dict, s_noise=self.s_noise
        )


class MultistepSDEScheduler(_Tunable, DPMSolverMultistepScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """DPM++ 2M / 3M SDE with the job's ``s_noise``: k-diffusion multiplies the step noise by it."""

    APPLIES = frozenset({"s_noise"})

    def _scaled(self, noise: torch.Tensor | None) -> torch.Tensor | None:
        return noise * self.s_noise if noise is not None and self.s_noise != 1.0 else noise

    def dpm_solver_first_order_update(self, *args: Any, noise: Any = None, **kwargs: Any) -> torch.Tensor:
        return super().dpm_solver_first_order_update(*args, noise=self._scaled(noise), **kwargs)

    def multistep_dpm_solver_second_order_update(
        self, *args: Any, noise: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        return super().multistep_dpm_solver_second_order_update(*args, noise=self._scaled(noise), **kwargs)

    def multistep_dpm_solver_third_order_update(
        self, *args: Any, noise: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        return super().multistep_dpm_solver_third_order_update(*args, noise=self._scaled(noise), **kwargs)


class EulerAncestralScheduler(_Tunable, EulerDiscreteScheduler):  # type: ignore[misc]  # diffusers' own config_name clash
    """A1111's Euler a (k-diffusion ``sample_euler_ancestral``) on EulerDiscreteScheduler's sigmas.

    diffusers' own EulerAncestralDiscreteScheduler supports neither Karras/exponential/custom sigma
    schedules nor eta, both of which A1111 offers for Euler a. (A1111 passes no ``s_noise`` to
    Euler a, so a request's s_noise leaves it at 1 here too.)
    """

    APPLIES = frozenset({"eta"})

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if self.step_index is None:
            self._init_step_index(timestep)
        index = int(self.step_index)
        x = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if self.config.get("prediction_type") == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        else:
            denoised = x - sigma * model_output
        sigma_up = min(
            float(sigma_next),
            self.eta * float((sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5),
        )
        sigma_down = (float(sigma_next) ** 2 - sigma_up**2) ** 0.5
        prev = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_up > 0:
            noise = randn_tensor(
                model_output.shape, dtype=torch.float32, device=x.device, generator=generator
            )
            prev = prev + noise * self.s_noise * sigma_up
        self._step_index = index + 1  # type: ignore[assignment]
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)
