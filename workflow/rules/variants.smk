# Model variants (config `variants`): each is trained, sampled, evaluated and compared by the main run's rules
# with its merged config (VARIANTS in common.smk), under {results}/variants/{variant}/, laid out like
# {results}/ itself. They share the data, split and preprocessed volumes, the real volumes they are scored
# against and the sample cache (keyed by checkpoint). No job exists when the list is empty.

V = f"{R}/variants/{{variant}}"


use rule train as train_variant with:
    input:
        train=f"{R}/splits/train.txt",
        volumes=preprocessed,
        nodules=lambda wildcards: nodule_inputs(variant(wildcards.variant)),
    output:
        model=f"{V}/train/model.pt",
        log=f"{V}/train/log.csv",
    params:
        srun=srun,
        volumes=f"{R}/preprocessed",
        state=f"{V}/train_state",
        tensorboard=f"{V}/logs/tensorboard",
        settings=lambda wildcards: train_settings(variant(wildcards.variant)),
        conditions=lambda wildcards: train_condition_options(variant(wildcards.variant)),
    log:
        f"{V}/logs/train.log",


use rule sample as sample_variant with:
    input:
        model=f"{V}/train/model.pt",
        nodules=lambda wildcards: nodule_inputs(variant(wildcards.variant), split=True),
    output:
        samples=sample_files(f"{V}/samples", CFG.sample.n),
        hu=[],  # HU copies only for the main run
    params:
        options=lambda wildcards: sample_options(variant_sample(CFG, wildcards.variant),
                                                 sample_condition_options(variant(wildcards.variant))),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    log:
        f"{V}/logs/sample.log",


use rule evaluate as evaluate_variant with:
    input:
        test=f"{R}/splits/test.txt",
        train=f"{R}/splits/train.txt",
        real=preprocessed,
        synthetic=sample_files(f"{V}/samples", CFG.sample.n),
        model=f"{V}/train/model.pt",
    output:
        f"{V}/metrics/metrics.json",
    params:
        evaluate=evaluate_settings(),
        volumes=f"{R}/preprocessed",
        run=lambda wildcards: sample_setting(variant(wildcards.variant).sample),
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),
    log:
        f"{V}/logs/evaluate.log",


# A variant's compared samplers: the evaluate.compare_samplers entries that fit its objective.
use rule sample as sample_variant_compare with:
    input:
        model=f"{V}/train/model.pt",
        nodules=lambda wildcards: nodule_inputs(variant(wildcards.variant), split=True),
    output:
        samples=sample_files(f"{V}/compare/{{tag}}/samples", CFG.sample.n),
        hu=[],
    params:
        options=lambda wildcards: sample_options(
            compared_sample(variant(wildcards.variant).sample, variant_compare_run(wildcards.variant, wildcards.tag)),
            sample_condition_options(variant(wildcards.variant)),
        ),
        out=lambda wildcards, output: os.path.dirname(output.samples[0]),
        cache=f"{R}/sample_cache",
    log:
        f"{V}/logs/compare/{{tag}}/sample.log",


use rule evaluate as evaluate_variant_compare with:
    input:
        test=f"{R}/splits/test.txt",
        train=f"{R}/splits/train.txt",
        real=preprocessed,
        synthetic=sample_files(f"{V}/compare/{{tag}}/samples", CFG.sample.n),
        model=f"{V}/train/model.pt",
    output:
        f"{V}/compare/{{tag}}/metrics.json",
    params:
        evaluate=evaluate_settings(),
        volumes=f"{R}/preprocessed",
        run=lambda wildcards: {**variant_compare_run(wildcards.variant, wildcards.tag),
                               **guidance_of(variant(wildcards.variant).sample)},
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),
    log:
        f"{V}/logs/compare/{{tag}}/evaluate.log",
