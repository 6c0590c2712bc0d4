"""pipeline: Ray Data scanning of image archives (grows with the scan issue)."""
