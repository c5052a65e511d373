# Synthetic volumes from the EMA weights through `ctdiff sample`, launched with Accelerate (ctdiff.launch):
# one process per GPU of the job, sharing the samples by index; CPU when none. Finished samples are cached
# in {results}/sample_cache/, never a declared output, so a killed job resumes. A model.condition: nodules
# model draws sample i with the i-th held-out (test split) mask, sorted and cycled, written to samples/nodules/.


rule sample:
    input:
        model=f"{R}/train/model.pt",
        nodules=lambda wildcards: nodule_inputs(CFG, split=True),
    output:
        samples=SAMPLES,
        hu=SAMPLES_HU,
    params:
        options=sample_options(CFG.sample, sample_condition_options(CFG)),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{R}/logs/sample.log",
    conda:
        ENV
    shell:
        "\"${{CTDIFF_PYTHON:-python}}\" -m ctdiff.launch --gpus {resources.gpu} --threads {threads} -- -m ctdiff.cli sample"
        " --checkpoint {input.model} {params.options} --out {params.out} --cache {params.cache} --no-progress"
        " > {log} 2>&1"
