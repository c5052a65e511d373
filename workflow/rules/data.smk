# DICOM tree -> per-item NIfTI (HU) -> per-item preprocessed volume -> patient-level split.

if CFG.data.source == "phantom":

    rule phantom:
        output:
            directory(f"{R}/dicom"),
        params:
            data=section("data"),
        log:
            f"{R}/logs/phantom.log",
        conda:
            ENV
        script:
            "../scripts/phantom.py"


checkpoint discover:
    input:
        DICOM_ROOT if CFG.data.source == "phantom" else [],
    output:
        inventory=f"{R}/qc/inventory.tsv",
        series=f"{R}/discover/series.json",
    params:
        root=lambda wildcards, input: input[0] if CFG.data.source == "phantom" else CFG.data.root,
        series=CFG.data.series,
    log:
        f"{R}/logs/discover.log",
    conda:
        ENV
    script:
        "../scripts/discover.py"


rule convert:
    input:
        series=f"{R}/discover/series.json",
    output:
        nifti=f"{R}/nifti/{{item}}.nii.gz",
        qc=f"{R}/qc/convert/{{item}}.tsv",
    params:
        root=DICOM_ROOT,
    log:
        f"{R}/logs/convert/{{item}}.log",
    conda:
        ENV
    script:
        "../scripts/convert.py"


rule preprocess:
    input:
        f"{R}/nifti/{{item}}.nii.gz",
    output:
        f"{R}/preprocessed/{{item}}.nii.gz",
    params:
        preprocess=section("preprocess"),
    log:
        f"{R}/logs/preprocess/{{item}}.log",
    conda:
        ENV
    script:
        "../scripts/preprocess.py"


rule split:
    input:
        series=f"{R}/discover/series.json",
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
