"""Write the synthetic phantom cohort as a DICOM tree."""
import sys
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.data.phantom import write_cohort

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
data = section_from_dict("data", snakemake.params.data)
patients = write_cohort(Path(snakemake.output[0]), data.n_patients, data.seed, matrix=data.phantom_matrix)
print(f"wrote {len(patients)} phantom patients")
