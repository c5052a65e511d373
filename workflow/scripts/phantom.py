"""Write the synthetic phantom cohort as a DICOM tree."""
from pathlib import Path

from ctdiff.phantom import write_cohort
from ctdiff.logs import to_file

to_file(snakemake.log[0])
p = snakemake.params
patients = write_cohort(Path(snakemake.output[0]), p.n_patients, p.seed, matrix=p.matrix, nodules=p.nodules,
                        nodule_mm=tuple(p.nodule_mm))
print(f"wrote {len(patients)} phantom patients")
