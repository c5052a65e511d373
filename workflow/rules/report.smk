# Figure 1 (real vs synthetic, three views) and the report (Markdown + self-contained HTML).


rule figure:
    input:
        test=f"{R}/splits/test.txt",
        real=preprocessed,
        synthetic=SAMPLES,
    output:
        png=report(f"{R}/figures/figure1.png", caption="../report/figure1.rst", category="Figure 1"),
        pdf=f"{R}/figures/figure1.pdf",
        grid=report(f"{R}/figures/samples.png", caption="../report/samples.rst", category="Figure 1"),
    params:
        figure=section("figure"),
        volumes=f"{R}/preprocessed",
    log:
        f"{R}/logs/figure.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule report:
    input:
        metrics=f"{R}/metrics/metrics.json",
        figure=f"{R}/figures/figure1.png",
        log=f"{R}/train/log.csv",
        qc=f"{R}/qc/summary.tsv",
        pairs=f"{R}/figures/closest_pairs.png",
        samplers=sampler_table_input,
    output:
        md=f"{R}/report.md",
        html=report(f"{R}/report.html", caption="../report/report.rst", category="Report"),
    params:
        config=lambda wildcards: to_dict(CFG),
    log:
        f"{R}/logs/report.log",
    conda:
        ENV
    script:
        "../scripts/report.py"


rule closest_pairs:
    input:
        metrics=f"{R}/metrics/metrics.json",
    output:
        report(f"{R}/figures/closest_pairs.png", caption="../report/closest_pairs.rst", category="Memorisation"),
    params:
        volumes=f"{R}/preprocessed",
        samples=f"{R}/samples",
    log:
        f"{R}/logs/closest_pairs.log",
    conda:
        ENV
    script:
        "../scripts/closest_pairs.py"
