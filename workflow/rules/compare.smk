# The sampler comparison (evaluate.compare_samplers): each compared sampler draws sample.n volumes with
# sample.seed from the same checkpoint (sample i starts from the same x_T as samples/{i}), is scored like the
# main set against the same real volumes, and samplers.tsv holds one row per sampler, the main set first.
# No job exists when the list is empty (COMPARE in common.smk).


wildcard_constraints:
    tag=TAG_REGEX,  # the folder names ctdiff.options.tag writes


# The sample rule with the compared sampler, steps and eta replacing the sample section's (precision and
# compile stay, no HU copies); the cache folder is shared, keyed by checkpoint and sampler settings.
use rule sample as sample_compare with:
    output:
        samples=sample_files(f"{R}/compare/{{tag}}/samples", CFG.sample.n),
    params:
        options=lambda wildcards: sample_options(compared_sample(CFG.sample, compare_run(wildcards.tag))),
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
        run=lambda wildcards: compare_run(wildcards.tag),
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),  # the anatomy is measured in HU
    log:
        f"{R}/logs/compare/{{tag}}/evaluate.log",


rule sampler_table:
    input:
        main=f"{R}/metrics/metrics.json",
        compare=[f"{R}/compare/{tag}/metrics.json" for tag in COMPARE],
    output:
        report(f"{R}/metrics/samplers.tsv", caption="../report/samplers.rst", category="Metrics"),
    params:
        tags=list(COMPARE),
    log:
        f"{R}/logs/sampler_table.log",
    conda:
        ENV
    script:
        "../scripts/sampler_table.py"
