"""Write the Markdown and self-contained HTML reports."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.report.document import write_report

to_file(snakemake.log[0])
write_report(
    Path(snakemake.input.metrics),
    Path(snakemake.input.qc),
    snakemake.params.config,
    Path(snakemake.output.md),
    Path(snakemake.output.html),
    figure1_png=Path(snakemake.input.figure),
    learning_curve_png=Path(snakemake.input.curve),
    memorisation_png=Path(snakemake.input.histogram),
    pairs_png=Path(snakemake.input.pairs),
    anatomy_png=Path(snakemake.input.anatomy),
    reader_json=Path(snakemake.input.reader),
    variants_tsv=Path(snakemake.input.variants[0]) if snakemake.input.variants else None,
    nodules_png=Path(snakemake.input.nodules[0]) if snakemake.input.nodules else None,
    downstream_jsons=[Path(p) for p in snakemake.input.downstream],
)
