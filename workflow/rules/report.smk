# The figures (Figure 1, sample grid, learning curve, memorisation audit, anatomy) and the report (Markdown, which
# links the figures, and self-contained HTML, which embeds them).


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
        grid=16,  # synthetic volumes in the grid, four per row
    log:
        f"{R}/logs/figure.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule learning_curve:
    input:
        log=f"{TRAIN}/log.csv",
    output:
        report(f"{R}/figures/learning_curve.png", caption="../report/learning_curve.rst", category="Training"),
    log:
        f"{R}/logs/learning_curve.log",
    conda:
        ENV
    script:
        "../scripts/learning_curve.py"


rule memorisation_histogram:
    input:
        metrics=METRICS,
    output:
        report(f"{R}/figures/memorisation.png", caption="../report/memorisation.rst", category="Memorisation"),
    log:
        f"{R}/logs/memorisation_histogram.log",
    conda:
        ENV
    script:
        "../scripts/memorisation_histogram.py"


rule anatomy_figure:
    input:
        metrics=METRICS,
    output:
        report(f"{R}/figures/anatomy.png", caption="../report/anatomy.rst", category="Metrics"),
    log:
        f"{R}/logs/anatomy_figure.log",
    conda:
        ENV
    script:
        "../scripts/anatomy_figure.py"


# Only for a model.condition: nodules main run: crops through its requested nodules (nodule_figure_input).
rule nodule_figure:
    input:
        metrics=METRICS,
    output:
        report(f"{R}/figures/nodules.png", caption="../report/nodules.rst", category="Metrics"),
    params:
        samples=samples_folder(CFG, CFG.name),
        volumes=f"{R}/preprocessed",
    log:
        f"{R}/logs/nodule_figure.log",
    conda:
        ENV
    script:
        "../scripts/nodule_figure.py"


rule closest_pairs:
    input:
        metrics=METRICS,
    output:
        report(f"{R}/figures/closest_pairs.png", caption="../report/closest_pairs.rst", category="Memorisation"),
    params:
        volumes=f"{R}/preprocessed",
        samples=samples_folder(CFG, CFG.name),
        n=4,  # pairs shown, closest first, of the audit's closest pairs
    log:
        f"{R}/logs/closest_pairs.log",
    conda:
        ENV
    script:
        "../scripts/closest_pairs.py"


rule report:
    input:
        metrics=METRICS,
        qc=f"{R}/qc/summary.tsv",
        figure=f"{R}/figures/figure1.png",
        curve=f"{R}/figures/learning_curve.png",
        histogram=f"{R}/figures/memorisation.png",
        pairs=f"{R}/figures/closest_pairs.png",
        anatomy=f"{R}/figures/anatomy.png",
        reader=f"{R}/reader/analysis.json",
        variants=variant_table_input,
        nodules=nodule_figure_input,
        downstream=downstream_files(CFG),  # the downstream arms of every model they run for (none: no section)
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
