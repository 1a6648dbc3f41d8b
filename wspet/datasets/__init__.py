"""Making datasets offline (each a CLI): phantoms, conversion of real scans, DICOM, RT structures, DICOM SEG."""
