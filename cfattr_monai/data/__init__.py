"""Data: synthetic phantoms and preparers for public datasets, all written as MONAI datalists."""
