"""Evaluation: run methods over a dataset and report accuracy with the stop reasons behind it."""
