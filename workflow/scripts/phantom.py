"""Write the synthetic phantom cohort as a DICOM tree."""
import sys
from pathlib import Path

from ctdiff.data.phantom import write_cohort

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
p = snakemake.params
patients = write_cohort(Path(snakemake.output[0]), p.n_patients, p.seed, matrix=p.matrix)
print(f"wrote {len(patients)} phantom patients")
