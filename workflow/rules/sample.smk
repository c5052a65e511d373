# Synthetic volumes from the EMA weights through `ctdiff sample`, launched with Accelerate (ctdiff.launch):
# one process per GPU of the job, sharing the samples by index; CPU when none. Finished samples are cached
# in {results}/sample_cache/, never a declared output, so a killed job resumes.


rule sample:
    input:
        model=f"{R}/train/model.pt",
    output:
        samples=SAMPLES,
        hu=SAMPLES_HU,
    params:
        options=sample_options(CFG.sample),
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
