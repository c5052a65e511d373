"""ctdiff: unconditional 3D diffusion synthesis of chest CT volumes, after "Diffuse Until You Fake It".

The package holds the science; the Snakemake workflow in ``workflow/`` only wires its functions together.
Layout follows the data flow: ``data`` (phantom, DICOM discovery and conversion, preprocessing, split),
``model`` and ``diffusion`` (network and noise schedule), ``train`` and ``generate`` (training and
sampling stages), ``metrics`` (FID, MS-SSIM), ``plots`` and ``report``.
"""

__version__ = "0.1.0"
