# FID on Med3D features and both MS-SSIM protocols, synthetic vs held-out real volumes, with bootstrap
# intervals, the real-vs-real floor and the memorisation audit against the training volumes.


rule evaluate:
    input:
        test=f"{R}/splits/test.txt",
        train=f"{R}/splits/train.txt",
        real=preprocessed,
        synthetic=SAMPLES,
        model=f"{R}/train/model.pt",
    output:
        report(f"{R}/metrics/metrics.json", caption="../report/metrics.rst", category="Metrics"),
    params:
        evaluate=evaluate_settings(),
        volumes=f"{R}/preprocessed",
        run=sample_setting(CFG.sample),
        seed=CFG.sample.seed,
        hu_window=list(CFG.preprocess.hu_window),  # the anatomy is measured in HU
    threads: 8  # torch's CPU threads and the anatomy's processes; capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{R}/logs/evaluate.log",
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
