# Every sample set of every model scored alike: FID on Med3D features and both MS-SSIM protocols, synthetic
# vs held-out real volumes, with bootstrap intervals, the real-vs-real floor, the memorisation audit against
# the training volumes and, for a nodule-conditioned model, the control of the nodules. The membership-inference
# audit depends on the model alone: run once per model, copied into each of its sets' metrics. Then the variants
# table: one row per (model, set), the main model's first, when the run compares anything.


rule membership:
    input:
        train=f"{R}/splits/train.txt",
        test=f"{R}/splits/test.txt",
        real=preprocessed,
        model=f"{M}/train/model.pt",
    output:
        membership_file(CFG, "{model}"),
    params:
        privacy=section("privacy"),
        bootstrap={"n_boot": CFG.evaluate.bootstrap, "level": CFG.evaluate.ci_level},  # as every interval
        volumes=f"{R}/preprocessed",
        settings=lambda wildcards: train_settings(MODELS[wildcards.model]),  # what the checkpoint must record
    threads: 8  # torch's CPU threads; capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{M}/logs/membership.log",
    conda:
        ENV
    script:
        "../scripts/membership.py"


rule evaluate:
    input:
        test=f"{R}/splits/test.txt",
        train=f"{R}/splits/train.txt",
        real=preprocessed,
        synthetic=sample_files(f"{M}/samples/{{set}}", CFG.sample.n),
        model=f"{M}/train/model.pt",
        membership=lambda wildcards: membership_inputs(CFG, wildcards.model),  # none without privacy.enabled
    output:
        report(f"{M}/metrics/{{set}}.json", caption="../report/metrics.rst", category="Metrics",
               subcategory="{model}"),
    params:
        evaluate=evaluate_settings(CFG),
        volumes=f"{R}/preprocessed",
        run=lambda wildcards: set_setting(CFG, wildcards.model, wildcards.set),
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),  # the anatomy is measured in HU
    threads: 8  # torch's CPU threads and the anatomy's processes; capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{M}/logs/evaluate/{{set}}.log",
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


rule variant_table:
    input:
        metrics=[row.metrics for row in ROWS],
        train=sorted({f"{row.train}/{name}" for row in ROWS for name in ("model.pt", "log.csv")}),
        downstream=downstream_files(CFG),  # each conditioned model's downstream arms, with downstream.enabled
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
