"""Reading results: `query`/`top` options and printing, calibration, near-duplicates,
contradictions. Imports ``pipeline.base`` (and ``trufor_core``); never the scan."""
