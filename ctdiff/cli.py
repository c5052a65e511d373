"""Command line: ``ctdiff train`` (what the workflow's train rule launches), ``ctdiff sample`` (what the
sample rule launches) and ``ctdiff export-dicom`` (a sample set as DICOM, what the export_dicom rule does).
Train and sample take their config sections the same way: ``--settings``, the JSON that
:func:`ctdiff.config.job_settings` writes (the workflow writes it once, :func:`ctdiff.config.read_job_settings`
reads it back into the same dataclasses).

``ctdiff sample --checkpoint results/models/paper/train/model.pt -n 10 --sampler ddim --steps 50 --out DIR`` draws
volumes outside Snakemake (``--sampler euler|heun`` for a checkpoint trained with ``diffusion.objective:
flow``; a sampler that does not fit the checkpoint's objective is refused before any sampling); sample ``i``
is the same volume the workflow writes as ``samples/{set}/{i:04d}`` for the same seed and sampler. Its options are
the keys of the ``sample`` config section, with the section's defaults (:class:`ctdiff.config.SampleConfig`).
Under ``accelerate launch`` (or ``python -m ctdiff.launch --gpus G -- -m ctdiff.cli sample ...``) the
processes share the samples by index.

``ctdiff export-nnunet --out DIR/Dataset500_real --real-items results/splits/train.txt --volumes
results/preprocessed`` writes the real training split as an nnU-Net v2 raw dataset; ``--samples`` adds (or
alone gives) a nodule-conditioned model's sample set (:mod:`ctdiff.export.nnunet`, what the workflow's
export rules run).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ctdiff.config import PreprocessConfig, SampleConfig, read_job_settings, section_from_dict, to_dict
from ctdiff.diffusion.samplers import FAMILIES
from ctdiff.options import PRECISIONS, SAMPLERS
from ctdiff.plan import sample_files


def _sampler_help() -> str:
    """``--sampler``'s help, from the sampler families: each one's objectives and what it is."""
    each = "; ".join(f"{f.name} ({' and '.join(f.objectives)} checkpoints): {f.summary}" for f in FAMILIES)
    return f"a sampler that fits the checkpoint's objective: {each}; default {SampleConfig().sampler}"


def _steps_help(timesteps: int = 1000) -> str:
    """``--steps``' help, from the sampler families' limits (worded for any T, computed at T = 1000)."""
    full = [f.name for f in FAMILIES if f.full_chain]
    fewer = [f.name for f in FAMILIES if f.max_steps(timesteps) < timesteps]
    notes = [f"{' and '.join(full)} must use T"] if full else []
    notes += [f"{' and '.join(fewer)} needs a number below T"] if fewer else []
    return f"sampler steps; default T, the checkpoint's diffusion.timesteps ({'; '.join(notes)})"


def _train(args: argparse.Namespace) -> None:
    from ctdiff.ingest.split import read_ids
    from ctdiff.training.loop import train

    cfg = read_job_settings("train", args.settings)  # the sections training reads, checked together
    ids = read_ids(args.train_list)
    files = [Path(args.volumes) / f"{item}.nii.gz" for item in ids]
    masks = [Path(args.nodules) / f"{item}.nii.gz" for item in ids] if args.nodules else None
    train(
        files,
        Path(args.out),
        Path(args.log_csv),
        Path(args.state),
        cfg,
        tensorboard_dir=Path(args.tensorboard_dir) if args.tensorboard_dir else None,
        progress=not args.no_progress,
        condition_files=masks,
    )


def sample_settings(args: argparse.Namespace) -> SampleConfig:
    """The ``sample`` section a parsed ``ctdiff sample`` command line asks for: ``--settings`` (what the
    workflow passes) or the section's defaults, with each option given by hand in place of its key."""
    base = read_job_settings("sample", args.settings).sample if args.settings else SampleConfig()
    given = {f.name: getattr(args, f.name) for f in fields(SampleConfig) if hasattr(args, f.name)}
    if not args.settings and "n" not in given:  # the count has no default on the command line
        print("ctdiff sample: error: give the number of volumes, -n N (or --settings holding sample.n)",
              file=sys.stderr)
        raise SystemExit(2)
    return section_from_dict("sample", {**to_dict(base), **given})


def _condition_masks(args: argparse.Namespace, n: int, out: Path) -> list[Path] | None:
    """The nodule mask of each sample (:mod:`ctdiff.sampling.conditions`): held-out masks from ``--nodules-from``
    (cycled through ``--nodule-items``' sorted ids, or the folder's masks), or the ``--nodule`` balls painted
    on the checkpoint's grid and written to ``<out>/nodules/requested.nii.gz``; None without either."""
    from ctdiff.sampling.conditions import held_out_masks, parse_nodule, requested_mask, write_requested

    if args.nodules_from and args.nodule:
        raise ValueError("give --nodules-from or --nodule, not both")
    if args.nodules_from:
        folder = Path(args.nodules_from)
        if args.nodule_items:
            from ctdiff.ingest.split import read_ids

            items = read_ids(args.nodule_items)
        else:
            items = [p.name.removesuffix(".nii.gz") for p in folder.glob("*.nii.gz")]
        return held_out_masks(folder, items, n)
    if args.nodule:
        import numpy as np

        from ctdiff.training.checkpoint import checkpoint_config, read_checkpoint
        from ctdiff.sampling.generate import sample_affine

        nodules = [parse_nodule(text) for text in args.nodule]
        data = checkpoint_config(read_checkpoint(Path(args.checkpoint))["config"]).data
        affine = sample_affine(np.asarray(data.affine), data.size)
        labels, rows = requested_mask(nodules, data.size, affine, mm=args.nodule_mm)
        return [write_requested(out / "nodules", labels, rows, affine)] * n
    return None


def _sample(args: argparse.Namespace) -> None:
    from ctdiff.sampling.generate import generate

    settings = sample_settings(args)
    out = Path(args.out)
    if args.nodule_mm and not args.nodule:
        raise ValueError("--nodule-mm applies to --nodule centres, and no --nodule was given")
    if args.nodule_items and not args.nodules_from:
        raise ValueError("--nodule-items names the items of --nodules-from, which was not given")
    generate(
        Path(args.checkpoint),
        [Path(p) for p in sample_files(out, settings.n)],
        Path(args.cache) if args.cache else out / ".cache",
        settings,
        hu_files=[Path(p) for p in sample_files(out / "hu", settings.n)] if settings.hu else None,
        device=args.device,
        progress=not args.no_progress,
        condition_masks=_condition_masks(args, settings.n, out),
    )


def _export_dicom(args: argparse.Namespace) -> None:
    from ctdiff.export.dicom import export_sample_set

    folder = Path(args.samples)
    samples = sorted(p for p in folder.glob("*.nii.gz") if p.name.removesuffix(".nii.gz").isdigit())
    if not samples:
        raise ValueError(f"no sample {{i:04d}}.nii.gz in {folder}")
    export_sample_set(Path(args.checkpoint), samples, Path(args.out), sampler=args.sampler, steps=args.steps,
                      eta=args.eta, seed=args.seed, guidance=args.guidance)


def _export_nnunet(args: argparse.Namespace) -> None:
    from ctdiff.export.nnunet import export, sample_volumes
    from ctdiff.ingest.split import read_ids

    if not args.real_items and not args.samples:
        raise ValueError("give the real cases (--real-items), the synthetic ones (--samples), or both")
    if args.real_items and not args.volumes:
        raise ValueError("--real-items names items of --volumes, which was not given")
    meta = export(Path(args.out), tuple(args.hu_window),
                  volumes=Path(args.volumes) if args.volumes else None,
                  masks=Path(args.nodules) if args.nodules else None,
                  items=read_ids(args.real_items) if args.real_items else (),
                  samples=sample_volumes(Path(args.samples)) if args.samples else ())
    print(f"{args.out}: {meta['numTraining']} cases")


DESCRIPTION = ("Train the diffusion model on preprocessed volumes (what the workflow's train rule runs), draw "
               "synthetic volumes from a checkpoint (what the sample rules run, and the way to sample outside "
               "Snakemake), or export volumes as DICOM or as an nnU-Net training set. 'ctdiff sample --help' lists "
               "the sampling options.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctdiff", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the diffusion model on preprocessed volumes")
    t.add_argument("--train-list", required=True, help="file with one training item id per line")
    t.add_argument("--volumes", required=True, help="folder holding <item>.nii.gz preprocessed volumes")
    t.add_argument("--settings", required=True,
                   help="JSON (or @file) with the model, diffusion, train and preprocess sections, as the workflow "
                        "writes them")
    t.add_argument("--state", required=True, help="folder for resumable checkpoints")
    t.add_argument("--out", required=True, help="final checkpoint")
    t.add_argument("--log-csv", required=True, help="loss log")
    t.add_argument("--nodules", default=None,
                   help="folder holding <item>.nii.gz nodule masks on the volumes' grid (model.condition: nodules)")
    t.add_argument("--tensorboard-dir", default=None, help="TensorBoard folder, used when train.tensorboard is true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    # The sample section's keys as options, each in place of its key of --settings (or of the section's default).
    d, given = SampleConfig(), {"default": argparse.SUPPRESS}
    s = sub.add_parser("sample", help="draw synthetic volumes from a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--settings", default=None,
                   help="JSON (or @file) with the sample section, as the workflow writes it; the options below "
                        "replace its keys")
    s.add_argument("-n", type=int, **given, help="number of volumes (required without --settings)")
    s.add_argument("--out", required=True, help="output folder; sample i is <out>/<i:04d>.nii.gz")
    s.add_argument("--sampler", choices=SAMPLERS, **given, help=_sampler_help())
    s.add_argument("--steps", type=int, **given, help=_steps_help())
    s.add_argument("--eta", type=float, **given, help=f"DDIM eta; default {d.eta}")
    s.add_argument("--batch-size", type=int, dest="batch_size", **given,
                   help=f"volumes in one network call per process; default {d.batch_size}")
    s.add_argument("--seed", type=int, **given, help=f"sample i depends only on (seed, i); default {d.seed}")
    s.add_argument("--precision", choices=PRECISIONS, **given,
                   help=f"bf16 = network under bf16 autocast; default {d.precision}")
    s.add_argument("--compile", action="store_true", **given, help="torch.compile the network")
    s.add_argument("--hu", action="store_true", **given, help="also write each volume in HU (int16) to <out>/hu/")
    s.add_argument("--guidance", type=float, **given,
                   help="classifier-free guidance scale w of a model.condition: nodules checkpoint: uncond + "
                        "w (cond - uncond); 1 = conditional, 0 = unconditional (1 network call per step), "
                        f"others twice the network cost; default {d.guidance}")
    s.add_argument("--nodules-from", default=None,
                   help="folder of <item>.nii.gz nodule masks (and .tsv tables) on the training grid: sample i "
                        "takes the mask of the i-th item (sorted), cycling when -n exceeds them")
    s.add_argument("--nodule-items", default=None,
                   help="file with one item id per line: the masks of --nodules-from to use (default: all)")
    s.add_argument("--nodule", action="append", default=[], metavar="X,Y,Z,DIAMETER_MM",
                   help="a nodule to draw (repeatable): a ball of the diameter around voxel (x, y, z) of every "
                        "sample; written to <out>/nodules/ as a mask and a table")
    s.add_argument("--nodule-mm", action="store_true",
                   help="--nodule centres are patient millimetres (LPS; origin at the volume's centre voxel)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: this process's accelerator device)")
    s.add_argument("--cache", default=None, help="folder of finished samples (default <out>/.cache)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sample)

    e = sub.add_parser("export-dicom", help="write a sample set as DICOM (CT series; nodule labels as DICOM SEG and "
                                            "LIDC XML for a nodule-conditioned checkpoint)")
    e.add_argument("--checkpoint", required=True, help="the checkpoint the set was drawn from (its sha256 and HU "
                                                       "window go into the files)")
    e.add_argument("--samples", required=True, help="folder of the samples <i:04d>.nii.gz (and nodules/ beside them)")
    e.add_argument("--out", required=True, help="output folder (written complete or not at all)")
    e.add_argument("--sampler", choices=SAMPLERS, required=True, help="the sampler the set was drawn with")
    e.add_argument("--steps", type=int, default=None, help="its steps (default T, the checkpoint's timesteps)")
    e.add_argument("--eta", type=float, default=d.eta, help=f"its DDIM eta; default {d.eta}")
    e.add_argument("--seed", type=int, required=True, help="the sample seed the set was drawn with")
    e.add_argument("--guidance", type=float, default=d.guidance, help=f"its guidance scale; default {d.guidance}")
    e.set_defaults(func=_export_dicom)

    n = sub.add_parser("export-nnunet", help="write real and/or synthetic volumes as an nnU-Net v2 raw dataset",
                       description="Write an nnU-Net v2 raw training set (imagesTr/, labelsTr/, dataset.json): "
                                   "real volumes (--real-items), synthetic ones (--samples) or both, in HU, "
                                   "labels 0 background and 1 nodule.")
    n.add_argument("--out", required=True,
                   help="the dataset folder to write, Dataset<3 digits>_<name> (replaced when it exists)")
    n.add_argument("--real-items", default=None,
                   help="file with one item id per line (e.g. results/splits/train.txt): the real cases")
    n.add_argument("--volumes", default=None, help="folder holding the items' preprocessed <item>.nii.gz")
    n.add_argument("--nodules", default=None,
                   help="folder holding the items' consensus masks <item>.nii.gz (default <volumes>/nodules)")
    n.add_argument("--samples", default=None,
                   help="a sample set folder of a model.condition: nodules model (<i:04d>.nii.gz, each with its "
                        "mask in nodules/): the synthetic cases")
    n.add_argument("--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   default=PreprocessConfig().hu_window,
                   help="the run's preprocess.hu_window, mapping [0, 1] to HU; default %(default)s")
    n.set_defaults(func=_export_nnunet)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"ctdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
