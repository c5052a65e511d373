# Synthetic volumes from the EMA weights through `ctdiff sample`, one rule for every sample set of every
# model: set `main` is drawn with the model's own sample section, every other set is a compared sampler
# (evaluate.compare_samplers, tag e.g. ddim-50) drawing sample.n volumes from the same checkpoint, sample i
# from the same x_T as main's sample i. Launched with Accelerate (ctdiff.launch): one process per GPU of the
# job, sharing the samples by index; CPU when none. Finished samples are cached in {results}/sample_cache/
# (keyed by checkpoint and sampler settings), never a declared output, so a killed job resumes. A
# model.condition: nodules model draws sample i with the i-th held-out (test split) mask, sorted and cycled,
# written beside the samples in nodules/.


rule sample:
    input:
        model=f"{M}/train/model.pt",
        nodules=lambda wildcards: nodule_inputs(MODELS[wildcards.model], split=True),
    output:
        samples=sample_files(f"{M}/samples/{{set}}", CFG.sample.n),
    params:
        settings=lambda wildcards: sample_settings(set_sample(CFG, wildcards.model, wildcards.set)),
        conditions=lambda wildcards: sample_condition_options(MODELS[wildcards.model]),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{M}/logs/sample/{{set}}.log",
    conda:
        ENV
    shell:
        "\"${{CTDIFF_PYTHON:-python}}\" -m ctdiff.launch --gpus {resources.gpu} --threads {threads} -- -m ctdiff.cli sample"
        " --checkpoint {input.model} --settings {params.settings:q} {params.conditions} --out {params.out}"
        " --cache {params.cache} --no-progress"
        " > {log} 2>&1"


# The same volumes in HU (int16, through the preprocessing window), for sample.hu: true (the main model's
# main set).
rule sample_hu:
    input:
        samples=sample_files(f"{M}/samples/{{set}}", CFG.sample.n),
    output:
        hu=sample_files(f"{M}/samples/{{set}}/hu", CFG.sample.n),
    params:
        hu_window=list(CFG.preprocess.hu_window),
    log:
        f"{M}/logs/sample/{{set}}_hu.log",
    conda:
        ENV
    script:
        "../scripts/sample_hu.py"
