"""Tests of the kernels_pallas package."""
