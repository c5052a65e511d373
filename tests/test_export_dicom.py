"""The DICOM export, checked with other people's tools: dciodvfy validates the CT and SEG objects; pydicom,
SimpleITK and dicom2nifti read the series to the same HU and geometry; ctdiff's own ingestion takes the export
as its data root and gives back the volumes and, voxel for voxel, the nodule masks."""
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctdiff.export.dicom import (MANIFEST, PLACEHOLDER_DATE, RESCALE_SLOPE, UID_ROOT, export_dicom, mint_uid,
                                 to_stack)
from ctdiff.export.lidc_xml import annotation_xml, slice_outlines
from ctdiff.files import load_volume, save_volume
from ctdiff.ingest.annotations.lidc_xml import parse
from ctdiff.ingest.annotations.nodules import fill
from ctdiff.ingest.annotations.rasterise import SliceGrid
from ctdiff.ingest.intensity import to_hu
from ctdiff.sampling.generate import sample_affine

HU_WINDOW = (-1000.0, 400.0)
PROVENANCE = {"checkpoint_sha256": "0123456789abcdef" * 4, "sampler": "ddim-50", "sample_seed": 7,
              "guidance": 2.0, "checkpoint_step": 1200}


# ---- awkward shapes: outlines that the rasteriser fills back exactly ---------------------------------------

def _shapes() -> dict[str, np.ndarray]:
    """Slices [rows, columns] that a naive outline gets wrong."""
    def blank():
        return np.zeros((16, 16), bool)
    one, edge, ring, two, lake, slot, diagonal = (blank() for _ in range(7))
    one[7, 7] = True                                           # a one-voxel nodule
    edge[0, 0:3] = True                                         # touching the image's border
    ring[3:12, 3:12] = True
    ring[6:9, 6:9] = False                                      # a hole
    two[2:6, 2:6] = True
    two[9:14, 8:12] = True                                      # two components on one slice
    lake[1:15, 1:15] = True
    lake[3:13, 3:13] = False
    lake[7, 7] = True                                           # an island in a lake
    slot[2:12, 2:12] = True
    slot[2:9, 6] = False                                        # a slot one pixel wide
    diagonal[[3, 4, 5, 6], [3, 4, 5, 6]] = True                 # pixels touching at corners only
    disk = np.hypot(*np.mgrid[-7.5:8, -7.5:8]) < 6.2
    return {"one": one, "edge": edge, "ring": ring, "two": two, "lake": lake, "slot": slot,
            "diagonal": diagonal, "disk": disk}


def _ingested(stack: np.ndarray, folder: Path) -> dict[str, np.ndarray]:
    """{nodule id: bool stack} as ctdiff's ingestion fills the LIDC file written for ``stack``
    ([columns, rows, slices] labels): XML written, parsed by the ingestion's reader, filled by its ``fill``."""
    columns, rows, n = stack.shape
    uids = [f"1.2.3.{k}" for k in range(n)]
    xml, numbers, _ = annotation_xml(stack, np.arange(n, dtype=float), uids, "1.2.3", "1.2")
    path = folder / "a.xml"
    path.write_bytes(xml)
    grid = SliceGrid(tuple(uids), np.arange(n, dtype=float), columns, rows, np.eye(3, 4), np.eye(4), stack.shape)
    out = {}
    for mark in parse(path).marks:
        problems = []
        voxels = fill(mark, grid, problems)
        assert not [p for p in problems if "outside the image" not in p], problems
        crk = grid.unravel(voxels)
        mask = np.zeros(stack.shape, bool)
        mask[crk[:, 0], crk[:, 1], crk[:, 2]] = True
        out[mark.nodule_id] = mask
    return out


@pytest.mark.parametrize("name", list(_shapes()))
def test_outlines_of_awkward_shapes_fill_back_exactly(name, tmp_path):
    region = _shapes()[name]
    _, rings = slice_outlines(region)
    assert rings == (name not in ("lake",)), "rings wherever they can be exact; per-row runs for the rest"
    stack = region.T[:, :, None].astype(np.uint8) * 5          # label 5 on one slice: [columns, rows, 1]
    assert np.array_equal(_ingested(stack, tmp_path)["5"], stack == 5)


def test_labels_of_random_blobs_fill_back_exactly_through_the_ingestions_reader(tmp_path):
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((20, 18, 6)), (2, 2, 1))
    labels = np.digitize(field, np.quantile(field, [0.75, 0.85, 0.95])).astype(np.uint8)   # labels 1..3
    labels[labels == 2] = 0                                    # a gap: labels 1 and 3
    got = _ingested(labels, tmp_path)
    assert set(got) == {"1", "3"}
    for label, mask in got.items():
        assert np.array_equal(mask, labels == int(label)), label


# ---- an exported conditioned set ---------------------------------------------------------------------------

def _labels(shape) -> np.ndarray:
    """Nodule labels with a hole, a one-voxel nodule, two components on one slice, a gap in the numbers and a
    nodule touching the volume's face."""
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 3:9, 3:7] = 1
    labels[5:7, 5:7, 4] = 0                                     # a hole on one slice
    labels[10, 10, 8] = 3                                       # one voxel; no label 2
    labels[2:5, 11:14, 9] = 4
    labels[7:10, 11:14, 9] = 4                                  # two components on one slice
    ball = np.hypot(*np.mgrid[:shape[0], :shape[1]] - np.array([shape[0] - 2, 4])[:, None, None]) < 3
    labels[:, :, shape[2] - 1][ball] = 6                        # on the last slice, reaching the face
    return labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two conditioned samples: the usual RAS+ sample grid, and a grid with permuted, flipped, anisotropic axes."""
    tmp = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(3)
    grids = [(sample_affine(np.diag([2.5, 2.5, 2.5, 1.0]), 20), (20, 20, 20))]
    oblique = np.array([[0.0, -1.5, 0.0, 30.0], [2.0, 0.0, 0.0, -40.0], [0.0, 0.0, -3.0, 25.0], [0, 0, 0, 1]])
    grids.append((oblique, (16, 18, 12)))
    samples, masks, volumes = [], [], []
    for i, (affine, shape) in enumerate(grids):
        volume = ndimage.gaussian_filter(rng.random(shape), 1).astype(np.float32)
        volume = (volume - volume.min()) / (volume.max() - volume.min())
        samples.append(tmp / "samples" / f"{i:04d}.nii.gz")
        masks.append(tmp / "samples" / "nodules" / f"{i:04d}.nii.gz")
        save_volume(samples[-1], volume, affine)
        save_volume(masks[-1], _labels(shape), affine)
        volumes.append((volume, _labels(shape), affine))
    manifest = export_dicom(samples, tmp / "dicom", PROVENANCE, HU_WINDOW, masks=masks)
    return tmp / "dicom", manifest, volumes


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)))
    return np.asarray(img.dataobj), img.affine


def _ct_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _read_pydicom(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU [columns, rows, slices] and the RAS affine from the tags, slices sorted along the slice normal."""
    datasets = [pydicom.dcmread(p) for p in _ct_files(folder)]
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    hu = np.stack([pydicom.pixels.apply_modality_lut(d.pixel_array, d).T for d in datasets], axis=-1)
    first, last = (np.array(d.ImagePositionPatient, float) for d in (datasets[0], datasets[-1]))
    row_mm, col_mm = (float(v) for v in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * col_mm, iop[3:] * row_mm
    lps[:3, 2], lps[:3, 3] = (last - first) / (len(datasets) - 1), first
    return hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_sitk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_dicom2nifti(folder: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    import dicom2nifti

    dicom2nifti.dicom_series_to_nifti(str(folder), str(tmp / "d2n.nii.gz"), reorient_nifti=False)
    img = nib.load(str(tmp / "d2n.nii.gz"))
    return np.asarray(img.dataobj), img.affine


def test_dciodvfy_finds_no_error_in_the_ct_and_seg_objects(exported):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: apt-get install dicom3tools")
    folder, manifest, _ = exported
    checked = {"CTImage": 0, "Segmentation": 0}
    slices = sum(entry["slices"] for entry in manifest["volumes"])
    for entry in manifest["volumes"]:
        for path in [*_ct_files(folder / entry["folder"] / "CT"), folder / entry["seg"]]:
            proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            lines = (proc.stdout + proc.stderr).splitlines()
            assert not [line for line in lines if line.startswith("Error")], (path, lines)
            checked.update({iod: checked[iod] + 1 for iod in checked if iod in lines})
    assert checked == {"CTImage": slices, "Segmentation": 2}, checked


def test_pydicom_simpleitk_and_dicom2nifti_read_the_same_hu_and_geometry(exported, tmp_path):
    folder, manifest, volumes = exported
    half_step = RESCALE_SLOPE / 2
    for entry, (volume, _, affine) in zip(manifest["volumes"], volumes):
        want_hu, want_affine = _canonical(to_hu(volume, HU_WINDOW), affine)
        source, _ = _canonical(HU_WINDOW[0] + volume.astype(np.float64) * (HU_WINDOW[1] - HU_WINDOW[0]), affine)
        ct = folder / entry["folder"] / "CT"
        for name, (hu, got_affine) in {"pydicom": _read_pydicom(ct), "SimpleITK": _read_sitk(ct),
                                       "dicom2nifti": _read_dicom2nifti(ct, tmp_path)}.items():
            hu, got_affine = _canonical(hu, got_affine)
            assert hu.shape == want_hu.shape, name
            assert np.array_equal(hu, want_hu), name                          # the stored int16 HU, exactly
            assert np.abs(hu - source).max() <= half_step + 1e-4, name        # the float sample, within rounding
            np.testing.assert_allclose(got_affine, want_affine, atol=1e-4, err_msg=name)


def test_ctdiffs_own_ingestion_gives_back_the_volumes_and_the_masks_voxel_for_voxel(exported, tmp_path):
    from ctdiff.ingest.annotations.ingest import read_table
    from ctdiff.ingest.convert import convert_or_reject
    from ctdiff.ingest.discover import discover

    folder, manifest, volumes = exported
    items = discover(folder, tmp_path / "inventory.tsv", tmp_path / "series.json",
                     annotations_tsv=tmp_path / "annotations.tsv")
    assert items == ["SYNTH-0000", "SYNTH-0001"]                          # the SEG series are no CT volume
    assert (tmp_path / "annotations.tsv").read_text().count("\tmatched\t") == 2
    for item, entry, (volume, labels, affine) in zip(items, manifest["volumes"], volumes):
        row = convert_or_reject(folder, tmp_path / "series.json", item, tmp_path / item, tmp_path / f"{item}.tsv")
        assert row["decision"] == "converted", row
        hu, hu_affine = load_volume(tmp_path / item / "hu.nii.gz")
        got, got_affine = _canonical(hu, hu_affine)
        want, want_affine = _canonical(to_hu(volume, HU_WINDOW), affine)
        assert np.array_equal(got, want)
        np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)

        numbers = {int(label): n for label, n in entry["nodules"].items()}
        assert numbers == {1: 1, 3: 2, 4: 3, 6: 4}                        # label order, numbered from 1
        renumbered = np.zeros_like(labels)
        for label, n in numbers.items():
            renumbered[labels == label] = n
        mask, mask_affine = load_volume(tmp_path / item / "nodules.nii.gz")
        assert np.array_equal(_canonical(mask, mask_affine)[0], _canonical(renumbered, affine)[0])
        table = read_table(tmp_path / item / "nodules.tsv")
        assert [(int(r["label"]), r["kind"], int(r["voxels"])) for r in table] == \
            [(n, "nodule", int((labels == label).sum())) for label, n in numbers.items()]
        qc = (tmp_path / item / "annotations.tsv").read_text()
        assert "\tskipped\t" not in qc and "enclose no pixel" not in qc, qc


def _all_elements(ds: pydicom.Dataset):
    for element in ds.iterall():
        yield element
    yield from ds.file_meta.iterall()


def test_no_patient_identity_no_real_dates_and_the_provenance_in_every_object(exported):
    folder, manifest, _ = exported
    sha = PROVENANCE["checkpoint_sha256"]
    for entry in manifest["volumes"]:
        ct = [pydicom.dcmread(p) for p in _ct_files(folder / entry["folder"] / "CT")]
        seg = pydicom.dcmread(folder / entry["seg"])
        for ds in [*ct, seg]:
            for element in _all_elements(ds):
                value = "" if element.value is None else str(element.value)
                if element.VR in ("DA", "DT"):
                    assert value in ("", PLACEHOLDER_DATE) or value.startswith(PLACEHOLDER_DATE), element
                elif element.VR == "TM":
                    assert value in ("", "000000"), element
                elif element.VR == "PN":
                    assert element.keyword == "PatientName" and value == f"SYNTHETIC^{entry['index']:04d}" \
                        or value == "", element
            for keyword in ("InstitutionName", "InstitutionAddress", "OperatorsName", "PerformingPhysicianName",
                            "OtherPatientIDs", "PatientAge", "PatientAddress", "PatientWeight", "InstanceCreationDate",
                            "DeviceSerialNumber" if ds.Modality == "CT" else "PatientAge"):
                assert keyword not in ds, keyword
            assert ds.PatientID == entry["patient_id"] and ds.PatientBirthDate == "" and ds.PatientSex == ""
            assert ds.PatientIdentityRemoved == "YES"
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
                uid = str(ds[keyword].value)
                assert uid.startswith(UID_ROOT + ".") and len(uid) <= 64 and re.fullmatch(r"[0-9.]+", uid), uid
        for ds in ct:
            assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
            assert ds.SeriesDescription == f"SYNTHETIC ddim-50 seed 7 sha256 {sha[:12]}"
            for text in (ds.ImageComments, ds.DerivationDescription):
                assert text.startswith("SYNTHETIC CT volume, not a patient") and sha in text
                assert "sampler ddim-50, guidance 2, seed 7" in text
            assert ds.StudyInstanceUID == entry["study_uid"] and ds.SeriesInstanceUID == entry["series_uid"]
        assert [int(d.InstanceNumber) for d in ct] == list(range(1, len(ct) + 1))   # file n = slice n, along S
        z = [float(d.ImagePositionPatient[2]) for d in ct]
        assert z == sorted(z) and len(set(z)) == len(z)
        assert seg.StudyInstanceUID == entry["study_uid"]
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == entry["series_uid"]
        assert len(seg.SegmentSequence) == len(entry["nodules"])
        assert len({d.SOPInstanceUID for d in [*ct, seg]}) == len(ct) + 1


def test_seg_holds_the_labels_as_highdicom_reads_them_back(exported):
    import highdicom as hd

    folder, manifest, volumes = exported
    entry, (_, labels, affine) = manifest["volumes"][0], volumes[0]
    seg = hd.seg.segread(folder / entry["seg"])
    ct_uids = [pydicom.dcmread(p).SOPInstanceUID for p in _ct_files(folder / entry["folder"] / "CT")]
    frames = seg.get_pixels_by_source_instance(ct_uids, combine_segments=True)     # [slices, rows, columns]
    stack, _ = to_stack(labels.astype(np.int64), affine)
    renumbered = np.zeros_like(stack)
    for label, n in entry["nodules"].items():
        renumbered[stack == int(label)] = n
    assert np.array_equal(frames.transpose(2, 1, 0), renumbered)


def test_unconditioned_set_stable_uids_and_refusals(tmp_path):
    affine = sample_affine(np.diag([3.0, 3.0, 3.0, 1.0]), 12)
    volume = np.linspace(0, 1, 12 ** 3, dtype=np.float32).reshape((12,) * 3)
    save_volume(tmp_path / "s" / "0000.nii.gz", volume, affine)
    a = export_dicom([tmp_path / "s" / "0000.nii.gz"], tmp_path / "a", PROVENANCE, (-1000, 400))  # as YAML gives it
    b = export_dicom([tmp_path / "s" / "0000.nii.gz"], tmp_path / "b", PROVENANCE, HU_WINDOW)
    assert a["volumes"][0]["series_uid"] == b["volumes"][0]["series_uid"]        # the same samples: the same UIDs
    assert not list((tmp_path / "a").rglob("*.xml")) and not (tmp_path / "a" / "SYNTH-0000" / "SEG").exists()
    assert a["volumes"][0]["seg"] is None and (tmp_path / "a" / MANIFEST).exists()
    other = dict(PROVENANCE, sample_seed=8)
    assert export_dicom([tmp_path / "s" / "0000.nii.gz"], tmp_path / "c", other, HU_WINDOW)["volumes"][0][
        "series_uid"] != a["volumes"][0]["series_uid"]
    assert mint_uid("x") != mint_uid("y") and len(mint_uid("x")) == 64

    save_volume(tmp_path / "m" / "0000.nii.gz", np.zeros((12,) * 3, np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    before = sorted(p.name for p in (tmp_path / "a").rglob("*"))
    with pytest.raises(ValueError, match="is not on the affine of its sample"):
        export_dicom([tmp_path / "s" / "0000.nii.gz"], tmp_path / "a", PROVENANCE, HU_WINDOW,
                     masks=[tmp_path / "m" / "0000.nii.gz"])
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == before          # the old export stands
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary folder left
    sheared = affine.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="not orthogonal"):
        to_stack(volume, sheared)
    with pytest.raises(ValueError, match="provenance lacks sample_seed"):
        export_dicom([tmp_path / "s" / "0000.nii.gz"], tmp_path / "d", {"checkpoint_sha256": "0", "sampler": "x"},
                     HU_WINDOW)


# ---- the command line and the workflow ---------------------------------------------------------------------

def test_cli_exports_a_set_drawn_from_a_conditioned_checkpoint_naming_its_provenance(tmp_path, capsys):
    """ctdiff sample, then ctdiff export-dicom: the checkpoint's sha256, the sampler's tag and the seed in the
    files; the requested nodule as a Segmentation and an LIDC file; a missing mask refused by name."""
    from conftest import write_volumes
    from test_condition import cond_config, write_masks
    from ctdiff import cli
    from ctdiff.files import file_sha256
    from ctdiff.training.loop import train

    volumes = write_volumes(tmp_path / "volumes", 2)
    masks = write_masks(tmp_path / "masks", volumes)
    model = tmp_path / "model.pt"
    train(volumes, model, tmp_path / "log.csv", tmp_path / "state", cond_config(steps=1), progress=False,
          condition_files=masks)
    samples = tmp_path / "samples"
    assert cli.main(["sample", "--checkpoint", str(model), "-n", "1", "--sampler", "ddim", "--steps", "2", "--seed",
                     "5", "--device", "cpu", "--no-progress", "--out", str(samples), "--nodule", "4,4,4,6"]) == 0
    out = tmp_path / "dicom"
    export = ["export-dicom", "--checkpoint", str(model), "--samples", str(samples), "--sampler", "ddim", "--steps",
              "2", "--seed", "5"]
    assert cli.main([*export, "--out", str(out)]) == 0
    first = pydicom.dcmread(out / "SYNTH-0000" / "CT" / "0001.dcm")
    assert file_sha256(model) in first.ImageComments and "sampler ddim-2, seed 5" in first.ImageComments
    assert (out / "SYNTH-0000" / "SEG" / "seg.dcm").exists() and (out / "SYNTH-0000" / "CT" / "0000.xml").exists()
    (samples / "nodules" / "0000.nii.gz").unlink()
    assert cli.main([*export, "--out", str(tmp_path / "again")]) == 2
    assert "nodule-conditioned, but the mask" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_dry_run_schedules_the_export_only_when_asked(tmp_path):
    from test_workflow import TINY, planned_jobs, snakemake

    assert "export_dicom" not in planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY)))
    change = tmp_path / "change.yaml"
    change.write_text("export:\n  dicom: true\n")
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    assert planned_jobs(proc)["export_dicom"] == 2                        # tiny.yaml: main and ddim-10 sets
    assert "results/models/paper/export/dicom/main" in proc.stdout
    assert "results/models/paper/export/dicom/ddim-10" in proc.stdout
