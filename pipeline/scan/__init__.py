"""The scan itself: the Ray driver, the plan, reading/hashing/decoding (pHash, C2PA), the predictor
actors and their stand-in, dedup. Imports ``pipeline.base``, ``noiseprint_lab`` and ``trufor_core``."""
