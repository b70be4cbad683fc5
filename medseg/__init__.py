"""medseg: segmentation of volumetric medical scans, from DICOM or NIfTI in to masks out."""

__version__ = "0.1.0"
