# ctdiff: "Diffuse Until You Fake It" as a workflow.
# snakemake --cores all                      the embedded phantom demo (config/config.yaml)
# snakemake --cores all --configfile config/lidc.yaml   a real LIDC-IDRI download

import os

# The embedded default, found next to this Snakefile whatever the working directory (--directory).
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/reader.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/downstream.smk"


rule all:
    input:
        f"{R}/figures/figure1.png",
        f"{R}/report.md",
        f"{R}/report.html",
        f"{R}/reader/study.zip",  # the blinded reader study, to send; its analysis is in the report
        SAMPLES_HU,  # the main model's samples in HU, with sample.hu: true
        variant_table_input(),  # the variants table, when the run compares samplers or variants
        DICOM_EXPORTS,  # every sample set as DICOM, with export.dicom: true
        nnunet_export_input(),  # nnU-Net training sets, with export.nnunet: true
        downstream_files(CFG),  # does synthetic data help a segmenter? (downstream.enabled, conditioned models)
    default_target: True
