# Sample sets written for other tools, with export.dicom: true. DICOM: one CT series per volume and, for a
# nodule-conditioned model, the labels each volume was drawn with (nodules/ beside the samples) as a DICOM
# Segmentation and an LIDC annotation XML; the folder appears complete or not at all.


rule export_dicom:
    input:
        samples=sample_files(f"{M}/samples/{{set}}", CFG.sample.n),
        model=f"{M}/train/model.pt",
    output:
        directory(f"{M}/export/dicom/{{set}}"),
    params:
        run=lambda wildcards: set_setting(CFG, wildcards.model, wildcards.set),
        seed=CFG.sample.seed,
    log:
        f"{M}/logs/export/dicom_{{set}}.log",
    conda:
        ENV
    script:
        "../scripts/export_dicom.py"
