"""Membership inference against a trained model: given the model, can an attacker tell whether a scan was in
its training set?

The memorisation audits (:mod:`ctdiff.metrics.memorisation`, :mod:`ctdiff.metrics.feature_memorisation`) ask
whether a *sample* copies a training scan. This audit asks the question the privacy literature on diffusion
models asks (Carlini et al. 2023, "Extracting Training Data from Diffusion Models"; Matsumoto et al. 2023,
"Membership Inference Attacks against Diffusion Models"; Duan et al. 2023, "Are Diffusion Models Vulnerable to
Membership Inference Attacks?" (SecMI); Dar et al. 2023 for 3D medical models): an attacker holds the model's
weights and a scan and scores how "familiar" the model finds it. n training volumes (members) and n held-out
volumes (non-members), drawn by seed, are scored alike; the audit reports how well each score separates them
(:mod:`ctdiff.metrics.roc`: ROC AUC, TPR at 1 % and 10 % FPR, bootstrap intervals). AUC 0.5 = the attack
learns nothing about membership; an audit is only as strong as its strongest attack.

Notation: ``x0`` [B, C, D, H, W] a volume in the diffusion's space (``model.representation``: the voxels in
[-1, 1], or their 8 Haar sub-bands) ; the path time f ∈ (0, 1) (0 = data, 1 = noise) is the DDPM timestep
``τ = round(f · (T − 1))`` for eps and v (:mod:`ctdiff.diffusion.schedule`) and the flow time ``t = f`` for flow
(:mod:`ctdiff.diffusion.flow`). The network is the checkpoint's EMA copy, as sampling uses it, in float32.

Attacks (score: higher = "more likely a member"):

1. ``loss`` (Matsumoto et al. 2023; Carlini et al. 2023's loss threshold): the training objective itself,
   evaluated at K fixed path times f_k (``privacy.times``) with one fixed noise draw ε_k per time, the *same*
   (f_k, ε_k) for every volume, so that volumes differ only in themselves:

       ℓ(x0) = (1/K) Σ_k  mean‖ model(x_{f_k}, f_k) − target_k ‖²                                          (1)

   with ``x_f = q(x0, τ, ε)`` and target ε (eps) or v (v); ``x_f = (1 − f)·x0 + f·ε`` and target ε − x0
   (flow): :func:`ctdiff.diffusion.schedule.training_loss` and :func:`ctdiff.diffusion.flow.training_loss`
   per volume. Score −ℓ. K network evaluations per volume; the per-time AUCs are recorded too.
2. ``t_error`` (SecMI, Duan et al. 2023, eq. 6–8): carry x0 deterministically to the path time
   ``privacy.t_error_time`` in S = ``privacy.t_error_steps`` first-order steps on the grid
   0 = g_0 < g_1 < … < g_S (for eps and v at most one per DDPM timestep: a small T takes fewer), giving x̃; take one deterministic step back to g_{S−1} and one forward again
   to g_S; the t-error is how far that round trip lands from where it started:

       x̃ = Φ(x0; g_0 → g_S),    x̂ = ψ(φ(x̃; g_S → g_{S−1}); g_{S−1} → g_S),    e(x0) = mean‖x̂ − x̃‖²     (2)

   Each step is the deterministic first-order move :func:`deterministic_step` (DDIM, eq. 12 of Song et al. 2021
   with η = 0, for eps and v, either direction; Euler on the flow's ODE for flow), using the network at the
   step's start. A member sits where the model's posterior is accurate, so the round trip closes better.
   Score −e. S + 2 network evaluations per volume.

Decisions:

- Equal sides: ``n = min(privacy.n, training volumes, held-out volumes)`` of each, drawn without replacement by
  ``numpy.random.default_rng(privacy.seed)`` (members first, then non-members), so the AUC has its usual
  meaning and the groups' sizes are recorded.
- The audit depends on the model only, not on any sample set: the workflow runs it once per model.
- A checkpoint of another model is refused (:func:`check_same_model`): the files it records as its training
  data must be the training split given, no held-out volume among them, and its model, diffusion, training and
  preprocessing settings those of the model audited (where given). An audit of the wrong model would report
  "no leak" for the wrong reason.
- A ``model.condition: nodules`` model is scored with the no-nodule condition (the unconditional branch that
  condition dropout trains): a lower bound on what an attacker who also holds the masks could do.
- The intervals use ``evaluate.bootstrap`` and ``evaluate.ci_level`` (every interval of the report alike).

Cost: (K + S + 2) network evaluations per volume, ``batch_size`` volumes per call; with the defaults
(K = 5, S = 10) 17, against sample.n × the sampler's steps for sampling (DDPM: 1000 per volume).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ctdiff import seeds
from ctdiff.config import Config, PrivacyConfig, check_privacy, to_dict
from ctdiff.diffusion import flow
from ctdiff.diffusion.schedule import Schedule, eps_from_v, q_sample, v_from_eps
from ctdiff.files import file_sha256, load_volume, write_json
from ctdiff.machine import describe
from ctdiff.metrics.evaluate import no_tf32
from ctdiff.metrics.roc import separation
from ctdiff.model import representation
from ctdiff.model.condition import null_condition
from ctdiff.training.checkpoint import CheckpointConfig, load_for_sampling, read_checkpoint
from ctdiff.training.trainset import prepare_volume

LOSS_SCORE = ("minus the training loss (eq. 1), averaged over the fixed path times with one fixed noise draw "
              "each, the same for every volume")
T_ERROR_SCORE = ("minus SecMI's t-error (eq. 2): the squared distance after one deterministic step back and "
                 "forth at the t-error time, the volume carried there deterministically")
READING = ("AUC 0.5 = the attack learns nothing about membership, 1 = it tells every training scan from every "
           "held-out one; TPR at 1 % / 10 % FPR = the share of training scans caught while flagging at most "
           "1 % / 10 % of held-out ones (a TPR far above the FPR is a leak even at an AUC near 0.5). Where "
           "1/n exceeds the FPR, the TPR is taken at zero false positives. The audit is as strong as its "
           "strongest attack.")
RESAMPLED = "members and non-members, independently, each group keeping its size"
#: Third seed word of the loss attack's noise draws (``seeds.generator(seed, k, NOISE_STREAM)``).
NOISE_STREAM = 7
#: Train settings that change no weight (speed, memory, logging); not compared with the model audited.
RUN_ONLY = frozenset({"compile", "grad_checkpointing", "recompute_norm", "cache_gb", "checkpoint_every",
                      "log_every", "tensorboard", "grad_accumulation"})


@dataclass(frozen=True)
class Probe:
    """The fixed draws every volume is scored with: the loss attack's path ``times`` [K] (fractions), their
    network times (DDPM timesteps for eps and v, flow times for flow) and ``noise`` [K, C, D, H, W]; the
    t-error's ``grid`` [S + 1] of network times from the data (0) to the t-error time (for eps and v at most
    every timestep: S = min(``t_error_steps``, the t-error's timestep))."""

    objective: str
    times: tuple[float, ...]
    network_times: tuple[float, ...]
    noise: Tensor
    grid: tuple[float, ...]


def path_time(fraction: float, objective: str, timesteps: int) -> float:
    """The network time of path fraction ``fraction``: the DDPM timestep ``round(fraction · (T − 1))`` for eps
    and v, the flow time ``fraction`` itself for flow."""
    return float(fraction) if objective == "flow" else int(round(fraction * (timesteps - 1)))


def make_probe(settings: PrivacyConfig, objective: str, timesteps: int, shape: Sequence[int]) -> Probe:
    """The :class:`Probe` of ``settings`` for volumes of ``shape`` (C, D, H, W) in the diffusion's space. The
    noise of time k comes from ``seeds.generator(seed, k, NOISE_STREAM)``: the same on every device."""
    noise = torch.stack([torch.randn(tuple(shape), generator=seeds.generator(settings.seed, k, NOISE_STREAM))
                         for k in range(len(settings.times))])
    end = path_time(settings.t_error_time, objective, timesteps)
    if objective == "flow":
        grid = tuple(float(g) for g in np.linspace(0.0, end, settings.t_error_steps + 1))
    else:  # distinct timesteps: at most every timestep up to the t-error's (config.check_privacy: end >= 1)
        steps = min(settings.t_error_steps, int(end))
        grid = tuple(int(g) for g in np.round(np.linspace(0, end, steps + 1)))
    return Probe(objective, tuple(settings.times), tuple(path_time(f, objective, timesteps) for f in settings.times),
                 noise, grid)


def _batch_t(value: float, x: Tensor, objective: str) -> Tensor:
    """The time ``[B]`` the network is called with at network time ``value``."""
    dtype = torch.float32 if objective == "flow" else torch.int64
    return torch.full((x.shape[0],), value, dtype=dtype, device=x.device)


def _net_time(t: Tensor, objective: str, timesteps: int) -> Tensor:
    return flow.network_time(t, timesteps) if objective == "flow" else t


def volume_losses(net, s: Schedule, probe: Probe, x0: Tensor) -> Tensor:
    """Eq. (1) before the mean over times: ``[B, K]`` float32, the loss of each volume at each probe time with
    that time's noise (broadcast over the batch). ``net(x, t)`` is the model as the training loss calls it."""
    out = []
    for k, value in enumerate(probe.network_times):
        noise = probe.noise[k].to(device=x0.device, dtype=x0.dtype).expand_as(x0)
        t = _batch_t(value, x0, probe.objective)
        if probe.objective == "flow":
            pred = net(flow.interpolate(x0, t, noise), flow.network_time(t, s.timesteps))
            target = flow.velocity(x0, noise)
        else:
            pred = net(q_sample(s, x0, t, noise), t)
            target = noise if probe.objective == "eps" else v_from_eps(s, x0, t, noise)
        out.append((pred.float() - target.float()).pow(2).flatten(1).mean(1))
    return torch.stack(out, dim=1)


def deterministic_step(net, s: Schedule, objective: str, x: Tensor, a: float, b: float) -> Tensor:
    """Move ``x`` [B, ...] from network time ``a`` to ``b`` (either direction) with the network at ``a``:

    - eps, v: DDIM with η = 0 (Song et al. 2021, eq. 12), ε̂ = the network's ε (v converted by
      :func:`ctdiff.diffusion.schedule.eps_from_v`), x̂0 = (x − √(1 − ᾱ_a) ε̂)/√ᾱ_a, and
      x_b = √ᾱ_b x̂0 + √(1 − ᾱ_b) ε̂ (no clipping: SecMI's deterministic reverse and denoise steps);
    - flow: Euler on dx/dt = v, x_b = x + (b − a) · v̂.
    """
    t = _batch_t(a, x, objective)
    out = net(x, _net_time(t, objective, s.timesteps)).float()
    if objective == "flow":
        return x + (b - a) * out
    eps = eps_from_v(s, x, t, out) if objective == "v" else out
    abar_a, abar_b = float(s.alphas_cumprod[int(a)]), float(s.alphas_cumprod[int(b)])
    x0 = (x - math.sqrt(1.0 - abar_a) * eps) / math.sqrt(abar_a)
    return math.sqrt(abar_b) * x0 + math.sqrt(1.0 - abar_b) * eps


def t_errors(net, s: Schedule, probe: Probe, x0: Tensor) -> Tensor:
    """Eq. (2): SecMI's t-error of each volume, ``[B]`` float32 (S + 2 network evaluations)."""
    g, x = probe.grid, x0
    for a, b in zip(g[:-1], g[1:]):  # Φ: the data carried to g_S
        x = deterministic_step(net, s, probe.objective, x, a, b)
    back = deterministic_step(net, s, probe.objective, x, g[-1], g[-2])  # φ: one step towards the data
    again = deterministic_step(net, s, probe.objective, back, g[-2], g[-1])  # ψ: and forward again
    return (again.float() - x.float()).pow(2).flatten(1).mean(1)


def check_same_model(recorded: CheckpointConfig, train_names: Sequence[str], heldout_names: Sequence[str], *,
                     expected: Config | None = None, where: str = "checkpoint") -> None:
    """Refuse (``ValueError`` listing every difference) a checkpoint that is not the model audited: its
    recorded training files must be ``train_names`` (as sets) and hold none of ``heldout_names``; with
    ``expected`` (the model's config: model, diffusion, train and preprocess sections), its recorded sections
    must equal them, train keys of :data:`RUN_ONLY` aside (and ``precision`` where ``expected`` says auto, which
    the checkpoint records resolved)."""
    problems = []
    have, want = set(recorded.data.files), set(train_names)
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        problems.append(f"it was trained on {len(have)} volumes, the training split given holds {len(want)}: "
                        f"{len(extra)} not in the split (e.g. {extra[:3]}), {len(missing)} of the split missing "
                        f"(e.g. {missing[:3]})")
    leaked = sorted(have & set(heldout_names))
    if leaked:
        problems.append(f"{len(leaked)} held-out volumes are among its training files (e.g. {leaked[:3]})")
    if expected is not None:
        for section in ("model", "diffusion", "train"):
            got, exp = to_dict(getattr(recorded, section)), to_dict(getattr(expected, section))
            for key in exp:
                if section == "train" and (key in RUN_ONLY or (key == "precision" and exp[key] == "auto")):
                    continue
                if got.get(key) != exp[key]:
                    problems.append(f"{section}.{key}: {got.get(key)!r} in the checkpoint, {exp[key]!r} in the model "
                                    "audited")
        pre = expected.preprocess
        for key, got, exp in (("size", recorded.data.size, pre.size), ("spacing_mm", recorded.data.spacing_mm,
                              pre.spacing_mm), ("hu_window", recorded.data.hu_window, pre.hu_window)):
            if got is not None and (tuple(got) if isinstance(got, (list, tuple)) else got) != exp:
                problems.append(f"preprocess.{key}: {got!r} in the checkpoint, {exp!r} in the model audited")
    if problems:
        raise ValueError(f"{where} is not the model audited; refusing to audit it:\n  " + "\n  ".join(problems))


def draw_sides(n_train: int, n_heldout: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal sides: ``min(n, n_train, n_heldout)`` sorted indices of training volumes, then as many of held-out
    volumes, drawn without replacement from ``numpy.random.default_rng(seed)`` (members first)."""
    m = min(n, n_train, n_heldout)
    if m < 1:
        raise ValueError(f"the membership audit needs training and held-out volumes, got {n_train} and {n_heldout}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, m, replace=False)), np.sort(rng.choice(n_heldout, m, replace=False))


def _read(paths: Sequence[Path], size: int, rep: str) -> Tensor:
    """Preprocessed volumes → ``[B, C, ...]`` float32 in the diffusion's space (checked as training checks them)."""
    vols = []
    for p in paths:
        array, affine = load_volume(Path(p))
        vols.append(prepare_volume(Path(p), array, affine, size))
    return representation.encode(torch.from_numpy(np.stack(vols))[:, None], rep)


def conditioned(model, recorded: CheckpointConfig):
    """``net(x, t)``: the model called as the training loss calls it, with the no-nodule condition (in the model's
    representation) for a ``model.condition: nodules`` model."""
    if recorded.model.condition == "none":
        return model
    size, rep = recorded.data.size, recorded.model.representation

    def net(x: Tensor, t: Tensor) -> Tensor:
        voxels = null_condition(torch.empty(x.shape[0], 2, size, size, size, device=x.device))
        return model(x, t, representation.encode(voxels, rep).to(x.dtype))

    return net


def attack_scores(net, s: Schedule, probe: Probe, paths: Sequence[Path], *, size: int, representation_name: str,
                  batch_size: int = 8, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Each volume's losses at the probe times ``[N, K]`` (eq. 1 before the mean) and t-error ``[N]`` (eq. 2),
    float64, reading ``batch_size`` preprocessed files at a time (the numbers do not depend on it beyond float32
    rounding), in full float32 (no TF32 on a GPU, as the evaluate stage)."""
    losses, errors = [], []
    with torch.no_grad(), no_tf32():
        for i in range(0, len(paths), batch_size):
            x0 = _read(paths[i : i + batch_size], size, representation_name).to(device)
            losses.append(volume_losses(net, s, probe, x0).cpu())
            errors.append(t_errors(net, s, probe, x0).cpu())
    return torch.cat(losses).double().numpy(), torch.cat(errors).double().numpy()


def membership_audit(checkpoint: Path, train: Sequence[Path], heldout: Sequence[Path], out: Path | None,
                     settings: PrivacyConfig, *, expected: Config | None = None, n_boot: int = 200,
                     level: float = 0.95, device: str | torch.device = "cpu") -> dict:
    """Score n training and n held-out volumes (preprocessed NIfTI files of the model's training and test splits)
    with both attacks against the EMA weights of ``checkpoint``; write the record to ``out`` (JSON; None =
    only return it). ``expected``: the config of the model audited (:func:`check_same_model`). Intervals from
    ``n_boot`` replicates at ``level`` (0 = none).

    Returns ``{"attacks": {"loss", "t_error"} (each: ``score``, :func:`ctdiff.metrics.roc.separation`'s AUC,
    TPRs and intervals, loss: ``per_time`` AUCs), "strongest" (the attack of the highest AUC), "strongest_auc",
    "n_per_side", "n_requested", "n_train_available", "n_held_out_available", "members", "non_members", "per_volume", "probe",
    "checkpoint", "bootstrap", "cost", "reading"}``.
    """
    model, schedule, recorded = load_for_sampling(Path(checkpoint), device)
    ckpt = read_checkpoint(Path(checkpoint))
    check_same_model(recorded, [Path(p).name for p in train], [Path(p).name for p in heldout], expected=expected,
                     where=f"checkpoint {checkpoint}")
    check_privacy(settings, recorded.diffusion)
    objective, rep, size = recorded.diffusion.objective, recorded.model.representation, recorded.data.size
    shape = representation.network_shape(rep, size)
    probe = make_probe(settings, objective, schedule.timesteps, shape)
    members, others = draw_sides(len(train), len(heldout), settings.n, settings.seed)
    paths = [Path(train[i]) for i in members] + [Path(heldout[i]) for i in others]
    is_member = np.arange(len(paths)) < len(members)

    start = time.perf_counter()
    per_time, t_error = attack_scores(conditioned(model, recorded), schedule, probe, paths, size=size,
                                      representation_name=rep, batch_size=settings.batch_size, device=device)
    seconds = time.perf_counter() - start
    loss = per_time.mean(1)

    boot = {"n_boot": n_boot, "level": level, "seed": settings.seed}
    attacks = {
        "loss": {"score": LOSS_SCORE, **separation(-loss[is_member], -loss[~is_member], **boot),
                 "per_time": [{"time": f, "network_time": nt,
                               "auc": separation(-per_time[is_member, k], -per_time[~is_member, k], n_boot=0)["auc"]}
                              for k, (f, nt) in enumerate(zip(probe.times, probe.network_times))]},
        "t_error": {"score": T_ERROR_SCORE, **separation(-t_error[is_member], -t_error[~is_member], **boot),
                    "time": settings.t_error_time, "steps": len(probe.grid) - 1, "grid": list(probe.grid)},
    }
    strongest = max(attacks, key=lambda name: attacks[name]["auc"])
    evaluations = len(probe.times) + len(probe.grid) - 1 + 2
    record = {
        "attacks": attacks,
        "strongest": strongest,
        "strongest_auc": attacks[strongest]["auc"],
        "n_per_side": len(members),
        "n_requested": settings.n,
        "n_train_available": len(train),
        "n_held_out_available": len(heldout),
        "members": [p.name for p in paths[: len(members)]],
        "non_members": [p.name for p in paths[len(members) :]],
        "per_volume": [{"volume": p.name, "member": bool(m), "loss": float(v), "t_error": float(e),
                        "loss_per_time": [float(x) for x in row]}
                       for p, m, v, e, row in zip(paths, is_member, loss, t_error, per_time)],
        "probe": {"objective": objective, "representation": rep, "times": list(probe.times),
                  "network_times": list(probe.network_times), "seed": settings.seed,
                  "noise": "one N(0, I) draw per time in the diffusion's shape, shared by every volume",
                  "condition": "none" if recorded.model.condition == "none" else "the no-nodule condition"},
        "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(Path(checkpoint)), "step": int(ckpt["step"]),
                       "weights": "EMA"},
        "bootstrap": {**boot, "resampled": RESAMPLED},
        "cost": {"seconds": seconds, "seconds_per_volume": seconds / len(paths),
                 "network_evaluations_per_volume": evaluations, "batch_size": settings.batch_size,
                 "device": describe(device)},
        "reading": READING,
    }
    if out is not None:
        write_json(Path(out), record)
    return record

