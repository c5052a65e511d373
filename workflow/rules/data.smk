# DICOM tree -> per-item NIfTI (HU) or rejection -> cohort table and summary -> per-item preprocessed
# volume -> patient-level split.

from ctdiff.plan import ingest_mem_mb

if DICOM.phantom:

    rule phantom:
        output:
            directory(DICOM.root),
        params:  # only what the phantom depends on: other data keys rerun no phantom
            n_patients=CFG.data.n_patients,
            seed=CFG.data.seed,
            matrix=CFG.data.phantom_matrix,
            nodules=CFG.data.phantom_nodules,
            nodule_mm=list(CFG.data.phantom_nodule_mm),
        log:
            f"{R}/logs/phantom.log",
        conda:
            ENV
        script:
            "../scripts/phantom.py"


checkpoint discover:
    input:
        DICOM.written,
    output:
        inventory=f"{R}/qc/inventory.tsv",
        series=f"{R}/discover/series.json",
        annotations=f"{R}/discover/annotations.tsv",  # headers only: the cohort table below is the final one
    params:
        root=lambda wildcards, input: input[0] if input else DICOM.root,  # a tree this run writes is the input
        series=CFG.data.series,
    log:
        f"{R}/logs/discover.log",
    conda:
        ENV
    script:
        "../scripts/discover.py"


# One job per chosen item that always succeeds on bad data: it writes the QC row (converted, or rejected
# with the reason) and a folder holding the volume only when it was converted, with the nodule mask and
# table of the series' LIDC annotation XML beside it (empty without XML). Convert and preprocess
# declare the memory their item's series needs (ctdiff.plan.ingest_mem_mb), so that Snakemake runs jobs
# together only within --resources mem_mb=...
rule convert:
    input:
        series=f"{R}/discover/series.json",
    output:
        nifti=directory(f"{R}/nifti/{{item}}"),
        qc=f"{R}/qc/convert/{{item}}.tsv",
    params:
        root=DICOM.root,
        recover_stacks=CFG.data.recover_stacks,
        nodule_consensus=CFG.data.nodule_consensus,
    resources:
        mem_mb=lambda wildcards, input: ingest_mem_mb("convert", input.series, wildcards.item),
    log:
        f"{R}/logs/convert/{{item}}.log",
    conda:
        ENV
    script:
        "../scripts/convert.py"


# Every QC row in one table, every annotation XML file with its final decision (discovery's, or what
# conversion made of it), and the counts per decision and reason; the items it lists as converted are
# the cohort of every later stage (see converted() in common.smk). It reads only what the convert jobs
# wrote, so it reruns with them and never makes them rerun.
checkpoint cohort:
    input:
        inventory=f"{R}/qc/inventory.tsv",
        xml=f"{R}/discover/annotations.tsv",
        qc=convert_qc,
        nifti=convert_folders,
    output:
        table=f"{R}/qc/cohort.tsv",
        annotations=f"{R}/qc/annotations.tsv",
        summary=report(f"{R}/qc/summary.tsv", caption="../report/qc_summary.rst", category="Data QC"),
    params:
        root=DICOM.root,  # as convert names the XML files
    log:
        f"{R}/logs/cohort.log",
    conda:
        ENV
    script:
        "../scripts/cohort.py"


rule preprocess:
    input:
        nifti=f"{R}/nifti/{{item}}",
    output:
        volume=f"{R}/preprocessed/{{item}}.nii.gz",
        nodules=f"{R}/preprocessed/nodules/{{item}}.nii.gz",
        table=f"{R}/preprocessed/nodules/{{item}}.tsv",
    params:
        preprocess=section("preprocess"),
    resources:
        mem_mb=lambda wildcards: ingest_mem_mb(
            "preprocess", f"{R}/discover/series.json", wildcards.item, CFG.preprocess.size
        ),
    log:
        f"{R}/logs/preprocess/{{item}}.log",
    conda:
        ENV
    script:
        "../scripts/preprocess.py"


rule split:
    input:
        cohort=f"{R}/qc/cohort.tsv",
    output:
        train=f"{R}/splits/train.txt",
        test=f"{R}/splits/test.txt",
    params:
        split=section("split"),
    log:
        f"{R}/logs/split.log",
    conda:
        ENV
    script:
        "../scripts/split.py"
