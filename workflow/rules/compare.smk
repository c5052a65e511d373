# The sampler comparison (evaluate.compare_samplers) of the main run: each compared sampler draws sample.n
# volumes with sample.seed from the same checkpoint (sample i starts from the same x_T as samples/{i}) and is
# scored like the main set against the same real volumes. variants.smk does the same for every variant, and
# variants.tsv holds one row per (variant, sampler), the main config's first. No job exists when nothing is
# compared (COMPARE and ROWS in common.smk).


wildcard_constraints:
    tag=TAG_REGEX,  # the folder names ctdiff.options.tag writes


# The sample rule with the compared sampler, steps and eta replacing the sample section's (precision and
# compile stay, no HU copies); the cache folder is shared, keyed by checkpoint and sampler settings.
use rule sample as sample_compare with:
    output:
        samples=sample_files(f"{R}/compare/{{tag}}/samples", CFG.sample.n),
    params:
        options=lambda wildcards: sample_options(compared_sample(CFG.sample, compare_run(wildcards.tag)),
                                                 sample_condition_options(CFG)),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    log:
        f"{R}/logs/compare/{{tag}}/sample.log",


# The evaluate rule on one compared sampler's volumes.
use rule evaluate as evaluate_compare with:
    input:
        test=f"{R}/splits/test.txt",
        train=f"{R}/splits/train.txt",
        real=preprocessed,
        synthetic=lambda wildcards: compare_samples(wildcards.tag),
        model=f"{R}/train/model.pt",
    output:
        f"{R}/compare/{{tag}}/metrics.json",
    params:
        evaluate=evaluate_settings(),
        volumes=f"{R}/preprocessed",
        run=lambda wildcards: {**compare_run(wildcards.tag), **guidance_of(CFG.sample)},
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),  # the anatomy is measured in HU
    log:
        f"{R}/logs/compare/{{tag}}/evaluate.log",


rule variant_table:
    input:
        metrics=[row.metrics for row in ROWS],
        train=sorted({f"{row.train}/{name}" for row in ROWS for name in ("model.pt", "log.csv")}),
    output:
        report(f"{R}/metrics/variants.tsv", caption="../report/variants.rst", category="Metrics"),
    params:
        rows=[vars(row) for row in ROWS],  # sampling.json beside each set's samples: read if there (cost)
    log:
        f"{R}/logs/variant_table.log",
    conda:
        ENV
    script:
        "../scripts/variant_table.py"
