# Does synthetic data help? (ctdiff.downstream, docs/nodules.md) With downstream.enabled, for every
# model.condition: nodules model: a nodule segmenter trained with the same budget on the real training split
# (once per run: it depends on no model), on the model's synthetic volumes with the masks they were drawn with,
# and on both drawn 1:1, each scored on the held-out real volumes. The synthetic volumes are a set of their own,
# drawn with the training split's masks, so that no segmenter sees a test nodule's place.


rule downstream_sample:
    input:
        model=f"{M}/train/model.pt",
        nodules=lambda wildcards: nodule_inputs(MODELS[wildcards.model]),
        train=f"{R}/splits/train.txt",
    output:
        samples=sample_files(f"{M}/downstream/samples", CFG.downstream.synthetic_n),
    params:
        settings=lambda wildcards: downstream_sample_settings(CFG, wildcards.model),
        conditions=downstream_condition_options(CFG),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{M}/logs/downstream/sample.log",
    conda:
        ENV
    shell:
        "\"${{CTDIFF_PYTHON:-python}}\" -m ctdiff.launch --gpus {resources.gpu} --threads {threads} -- -m ctdiff.cli sample"
        " --checkpoint {input.model} --settings {params.settings:q} {params.conditions} --out {params.out}"
        " --cache {params.cache} --no-progress"
        " > {log} 2>&1"


rule downstream_real:
    input:
        train=f"{R}/splits/train.txt",
        test=f"{R}/splits/test.txt",
        volumes=preprocessed,
        nodules=lambda wildcards: real_masks(),
    output:
        downstream_file(CFG, "real"),
    params:
        arm="real",
        model=None,
        downstream=section("downstream"),
        bootstrap={"n_boot": CFG.evaluate.bootstrap, "level": CFG.evaluate.ci_level},  # as every interval
        volumes=f"{R}/preprocessed",
        nodules=nodule_folder(CFG),
    threads: 8  # torch's CPU threads; capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{R}/logs/downstream/real.log",
    conda:
        ENV
    script:
        "../scripts/downstream.py"


rule downstream:
    input:
        train=f"{R}/splits/train.txt",
        test=f"{R}/splits/test.txt",
        volumes=preprocessed,
        nodules=lambda wildcards: real_masks(),
        samples=sample_files(f"{M}/downstream/samples", CFG.downstream.synthetic_n),
    output:
        f"{M}/downstream/{{arm}}.json",
    params:
        arm=lambda wildcards: wildcards.arm,
        model=lambda wildcards: wildcards.model,
        downstream=section("downstream"),
        bootstrap={"n_boot": CFG.evaluate.bootstrap, "level": CFG.evaluate.ci_level},
        volumes=f"{R}/preprocessed",
        nodules=nodule_folder(CFG),
    threads: 8
    resources:
        gpu=0,
    log:
        f"{M}/logs/downstream/{{arm}}.log",
    conda:
        ENV
    script:
        "../scripts/downstream.py"
