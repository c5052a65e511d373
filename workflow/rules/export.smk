# Sample sets written for other tools, with export.dicom: true. DICOM: one CT series per volume and, for a
# nodule-conditioned model, the labels each volume was drawn with (nodules/ beside the samples) as a DICOM
# Segmentation and an LIDC annotation XML; the folder appears complete or not at all.
#
# nnU-Net v2 raw training sets, with export.nnunet: true (docs/nodules.md): the real training split, and for each
# model.condition: nodules model its main sample set alone (synthetic) and beside the real split (combined);
# images in HU, labels 0 background and 1 nodule. ctdiff.plan.nnunet_export names each dataset's folder and id.
# The declared output is the dataset's dataset.json: the folder is written whole and renamed into place, and a
# directory() output would gain Snakemake's timestamp file inside the dataset.


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


rule export_nnunet_real:
    input:
        train=[f"{R}/splits/train.txt"],  # a list, as export_nnunet's (empty for its synthetic arm)
        volumes=preprocessed,
        nodules=lambda wildcards: real_masks(),
    output:
        f"{R}/export/nnunet/real/{{dataset}}/dataset.json",
    params:
        dataset=lambda wildcards: nnunet_dataset(wildcards, "real"),
        hu_window=list(CFG.preprocess.hu_window),
        volumes=f"{R}/preprocessed",
        nodules=nodule_folder(CFG),
    log:
        f"{R}/logs/export/nnunet/{{dataset}}.log",
    conda:
        ENV
    script:
        "../scripts/export_nnunet.py"


rule export_nnunet:
    input:
        train=lambda wildcards: [f"{R}/splits/train.txt"] if wildcards.arm == "combined" else [],
        volumes=lambda wildcards: preprocessed() if wildcards.arm == "combined" else [],
        nodules=lambda wildcards: real_masks() if wildcards.arm == "combined" else [],
        samples=sample_files(f"{M}/samples/{MAIN_SET}", CFG.sample.n),
    output:
        f"{M}/export/nnunet/{{arm}}/{{dataset}}/dataset.json",
    params:
        dataset=lambda wildcards: nnunet_dataset(wildcards, wildcards.arm, wildcards.model),
        hu_window=list(CFG.preprocess.hu_window),
        volumes=f"{R}/preprocessed",
        nodules=nodule_folder(CFG),
    log:
        f"{M}/logs/export/nnunet/{{arm}}/{{dataset}}.log",
    conda:
        ENV
    script:
        "../scripts/export_nnunet.py"
