"""What the workflow decides when it parses: light to import, the DICOM tree, the cohort's items, the compared
sampler settings and the `ctdiff sample` options of a sample set (read back by the command line: test_cli.py)."""
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from ctdiff.config import SampleConfig, from_dict
from ctdiff.options import TAG_REGEX
from ctdiff.plan import (
    INGEST_MEMORY_MARGIN,
    INGEST_MEMORY_MB,
    DicomTree,
    MAIN_SET,
    TableRow,
    comparison_runs,
    compared_sample,
    converted_items,
    dicom_tree,
    ingest_mem_mb,
    mem_mb_for,
    row_names,
    model_config,
    model_folder,
    sample_files,
    sample_settings,
    train_settings,
    table_rows,
    set_sample,
    set_setting,
)

HEAVY = ("torch", "numpy", "pandas", "scipy", "nibabel", "pydicom", "dicom2nifti", "isal", "SimpleITK",
         "matplotlib", "accelerate")


def test_parse_time_modules_import_nothing_heavy():
    """Every snakemake call, a dry run included, imports these; the heavy libraries wait for the jobs."""
    code = ("import sys, ctdiff.plan, ctdiff.config, ctdiff.options, ctdiff.overrides; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dicom_tree_is_the_phantom_or_the_given_root():
    phantom = dicom_tree(from_dict({"results": "out"}))
    assert phantom == DicomTree("out/dicom", phantom=True) and phantom.written == ["out/dicom"]
    given = dicom_tree(from_dict({"data": {"source": "dicom", "root": "/data/LIDC-IDRI"}}))
    assert given == DicomTree("/data/LIDC-IDRI", phantom=False) and given.written == []


def test_converted_items_are_the_rows_decided_converted(tmp_path):
    table = tmp_path / "cohort.tsv"
    table.write_text("item\tpatient\tdecision\treason\n"
                     "LIDC-0001\tLIDC-0001\tconverted\t\n"
                     "LIDC-0002_s2\tLIDC-0002\trejected\tmissing slice(s): gap\n"
                     "LIDC-0002_s3\tLIDC-0002\tconverted\t\n")
    assert converted_items(table) == {"LIDC-0001": "LIDC-0001", "LIDC-0002_s3": "LIDC-0002"}


#: Peak memory (MB) of one job, measured by benchmarks/convert_preprocess.py (table in benchmarks/README.md):
#: (stage, files, rows = columns, preprocess size, peak).
MEASURED_MB = [
    ("convert", 16, 32, 0, 101), ("convert", 100, 512, 0, 420), ("convert", 400, 512, 0, 1374),
    ("convert", 764, 512, 0, 2531),
    ("preprocess", 16, 32, 128, 226), ("preprocess", 100, 512, 128, 427), ("preprocess", 400, 512, 128, 1135),
    ("preprocess", 764, 512, 128, 1993), ("preprocess", 16, 32, 256, 459), ("preprocess", 100, 512, 256, 565),
    ("preprocess", 400, 512, 256, 1239), ("preprocess", 764, 512, 256, 2193), ("preprocess", 100, 512, 64, 414),
    ("preprocess", 764, 512, 64, 1894),
]


@pytest.mark.parametrize("stage, files, matrix, size, peak", MEASURED_MB)
def test_declared_memory_covers_each_measured_peak(stage, files, matrix, size, peak):
    """Above every measured peak, with room (>= 5 %), and not wastefully far above it (<= 40 %)."""
    declared = mem_mb_for(stage, files * matrix * matrix, size)
    assert 1.05 * peak <= declared <= 1.4 * peak, declared


def test_declared_memory_grows_with_the_series_and_has_a_floor():
    for stage in INGEST_MEMORY_MB:
        sizes = [0, 1, 10**4, 10**6, 10**7, 5 * 10**7, 10**8, 2 * 10**8, 10**9]
        mem = [mem_mb_for(stage, v, 128) for v in sizes]
        assert mem == sorted(mem) and mem[-1] > mem[0], stage
        floor = INGEST_MEMORY_MB[stage][0] * INGEST_MEMORY_MARGIN
        assert floor <= mem_mb_for(stage, 0) == mem_mb_for(stage, 1) < floor + 10, stage  # rounded up to 10 MB
        assert all(m % 10 == 0 for m in mem)
    assert mem_mb_for("preprocess", 10**8, 64) < mem_mb_for("preprocess", 10**8, 128) < mem_mb_for(
        "preprocess", 10**8, 256)
    assert mem_mb_for("convert", 10**8, 64) == mem_mb_for("convert", 10**8, 256)  # convert writes no cube
    with pytest.raises(ValueError, match="stage must be one of convert, preprocess"):
        mem_mb_for("train", 10)


def test_ingest_memory_comes_from_the_series_table(tmp_path):
    """files x rows x columns of the item's entry; a series whose headers gave no Rows or Columns (recorded as
    0) counts 512 x 512 slices; a rewritten table is read again."""
    table = tmp_path / "series.json"
    table.write_text(json.dumps({"A": {"n_files": 300, "rows": 256, "columns": 256, "files": []},
                                 "B": {"n_files": 300, "rows": 0, "columns": 0, "files": []}}))
    assert ingest_mem_mb("convert", table, "A") == mem_mb_for("convert", 300 * 256 * 256)
    assert ingest_mem_mb("convert", table, "B") == mem_mb_for("convert", 300 * 512 * 512)
    assert ingest_mem_mb("preprocess", str(table), "A", 128) == mem_mb_for("preprocess", 300 * 256 * 256, 128)
    table.write_text(json.dumps({"A": {"n_files": 600, "rows": 256, "columns": 256, "files": ["x"]}}))
    os.utime(table, ns=(1, 1))  # another version of the file even where the clock is coarse
    assert ingest_mem_mb("convert", table, "A") == mem_mb_for("convert", 600 * 256 * 256)
    with pytest.raises(ValueError, match="B: not in the series table"):
        ingest_mem_mb("convert", table, "B")


def test_sample_files_name_sample_i_by_its_index():
    assert sample_files("r/samples", 3) == ["r/samples/0000.nii.gz", "r/samples/0001.nii.gz", "r/samples/0002.nii.gz"]
    assert sample_files("r/compare/{tag}/samples", 1) == ["r/compare/{tag}/samples/0000.nii.gz"]


def test_comparison_runs_resolve_steps_and_leave_out_the_main_setting():
    cfg = from_dict({"sample": {"sampler": "ddpm"}, "evaluate": {"compare_samplers": [
        {"sampler": "ddim", "steps": 50}, {"sampler": "ddpm"}, {"sampler": "ddim", "steps": 50, "eta": 0.5},
        {"sampler": "ddim"}]}})
    assert comparison_runs(cfg) == {
        "ddim-50": {"sampler": "ddim", "steps": 50, "eta": 0.0},
        "ddim-50-eta0.5": {"sampler": "ddim", "steps": 50, "eta": 0.5},
        "ddim-1000": {"sampler": "ddim", "steps": 1000, "eta": 0.0},
    }
    # A flow model's samplers: steps null = T for euler and heun too.
    cfg = from_dict({"diffusion": {"objective": "flow"}, "sample": {"sampler": "euler", "steps": 30},
                     "evaluate": {"compare_samplers": [{"sampler": "heun", "steps": 15}, {"sampler": "euler"}]}})
    assert comparison_runs(cfg) == {"heun-15": {"sampler": "heun", "steps": 15, "eta": 0.0},
                                    "euler-1000": {"sampler": "euler", "steps": 1000, "eta": 0.0}}
    # The main set is DDIM 50 now: the DDIM 50 entry is that set, and DDPM becomes a compared sampler.
    cfg = from_dict({"sample": {"sampler": "ddim", "steps": 50}, "evaluate": {"compare_samplers": [
        {"sampler": "ddim", "steps": 50}, {"sampler": "ddpm", "steps": 1000}]}})
    assert list(comparison_runs(cfg)) == ["ddpm-1000"]
    assert comparison_runs(from_dict({})) == {}


def test_tags_match_the_wildcard_constraint():
    cfg = from_dict({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 7, "eta": 1e-5},
                                                       {"sampler": "dpmpp", "steps": 3}]}})
    assert list(comparison_runs(cfg)) == ["ddim-7-eta1e-05", "dpmpp-3"]
    assert all(re.fullmatch(TAG_REGEX, t) for t in comparison_runs(cfg))


def test_the_settings_of_a_sample_set_are_its_sample_section_alone():
    """The settings are the sample rule's params: they hold the sample section, nothing else, so a change
    elsewhere in the config redraws no sample set."""
    assert json.loads(sample_settings(SampleConfig(n=2, steps=50, hu=True))) == {
        "sample": {"n": 2, "sampler": "ddpm", "steps": 50, "eta": 0.0, "batch_size": 8, "seed": 0,
                   "precision": "fp32", "compile": False, "hu": True, "guidance": 1.0}}
    cfg = from_dict({"train": {"steps": 7}, "preprocess": {"size": 32}})
    assert set(json.loads(train_settings(cfg))) == {"model", "diffusion", "train", "preprocess"}
    assert json.loads(train_settings(cfg))["train"]["steps"] == 7


def test_a_compared_sampler_replaces_the_setting_and_drops_hu():
    main = SampleConfig(n=4, sampler="ddpm", batch_size=2, seed=3, precision="bf16", compile=True, hu=True)
    run = {"sampler": "ddim", "steps": 50, "eta": 0.5}
    compared = compared_sample(main, run)
    assert compared == replace(main, sampler="ddim", steps=50, eta=0.5, hu=False)


def test_table_rows_pair_every_variant_with_its_samplers_main_first():
    """Per model its own sample section's set, then the compared samplers that fit its objective, except
    the one it already draws; every model, the main one included, is laid out alike under models/."""
    cfg = from_dict({"results": "out", "evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 20},
                                                                         {"sampler": "ddpm"}]},
                     "variants": [{"name": "cosine", "train": {"lr_schedule": "cosine"}},
                                  {"name": "fast", "sample": {"sampler": "ddim", "steps": 20}}]})
    assert row_names(cfg) == ["paper", "cosine", "fast"]
    assert model_folder(cfg, "paper") == "out/models/paper" and model_folder(cfg, "fast") == "out/models/fast"
    rows = table_rows(cfg)
    assert [(r.variant, r.set) for r in rows] == [("paper", MAIN_SET), ("paper", "ddim-20"), ("cosine", MAIN_SET),
                                                  ("cosine", "ddim-20"), ("fast", MAIN_SET), ("fast", "ddpm-1000")]
    assert rows[0] == TableRow("paper", "main", "out/models/paper/metrics/main.json", "out/models/paper/samples/main",
                               "out/models/paper/train")
    assert rows[1].metrics == "out/models/paper/metrics/ddim-20.json"
    assert rows[1].samples == "out/models/paper/samples/ddim-20"
    assert rows[5] == TableRow("fast", "ddpm-1000", "out/models/fast/metrics/ddpm-1000.json",
                               "out/models/fast/samples/ddpm-1000", "out/models/fast/train")
    assert set_sample(cfg, "fast", MAIN_SET) == replace(cfg.sample, sampler="ddim", steps=20)
    assert set_sample(cfg, "fast", "ddpm-1000") == replace(cfg.sample, sampler="ddpm", steps=1000, eta=0.0)
    hu = from_dict({"sample": {"hu": True}, "variants": [{"name": "v", "train": {"lr": 1.0}}]})
    # HU copies are a rule of their own (sample_hu): no sample set draws them
    assert not set_sample(hu, "paper", MAIN_SET).hu and not set_sample(hu, "v", MAIN_SET).hu
    assert [(r.variant, r.set) for r in table_rows(from_dict({}))] == [("paper", MAIN_SET)]
    with pytest.raises(ValueError, match=r"models/nope: no such model \(configured: paper, cosine, fast\)"):
        model_config(cfg, "nope")
    with pytest.raises(ValueError, match=r"models/fast/samples/ddim-20: no such sampler for this model"):
        set_sample(cfg, "fast", "ddim-20")


def test_a_set_records_its_setting_as_the_evaluation_reads_it():
    cfg = from_dict({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 20}]},
                     "variants": [{"name": "guided", "model": {"condition": "nodules"}, "sample": {"guidance": 2.0}}]})
    assert set_setting(cfg, "paper", MAIN_SET) == {"sampler": "ddpm", "steps": None, "eta": 0.0}
    assert set_setting(cfg, "paper", "ddim-20") == {"sampler": "ddim", "steps": 20, "eta": 0.0}
    assert set_setting(cfg, "guided", "ddim-20")["guidance"] == 2.0


def test_each_row_compares_only_the_samplers_of_its_objective(monkeypatch):
    from ctdiff import options

    cfg = from_dict({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 20},
                                                       {"sampler": "dpmpp", "steps": 10}]}})
    assert list(comparison_runs(cfg)) == ["ddim-20", "dpmpp-10"]
    monkeypatch.setitem(options.SAMPLERS_FOR, "eps", ("ddpm", "ddim"))
    assert list(comparison_runs(cfg)) == ["ddim-20"]
