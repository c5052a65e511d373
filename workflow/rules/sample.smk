# Synthetic volumes from the EMA weights; finished samples are cached in {results}/sample_cache/.


rule sample:
    input:
        model=f"{R}/train/model.pt",
    output:
        SAMPLES,
    params:
        sample=section("sample"),
        cache=f"{R}/sample_cache",
    threads: 8  # capped at --cores; profiles may set their own
    resources:
        gpu=0,
    log:
        f"{R}/logs/sample.log",
    conda:
        ENV
    script:
        "../scripts/sample.py"
