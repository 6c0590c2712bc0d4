"""Noiseprint++ retraining and splice localisation: the library (no Ray). `jobs/` wires it into Ray and the CLI."""
