"""What people look at: figures, the review page, evidence bundles (templates/). Imports
``pipeline.base``, ``pipeline.scan`` (reading originals) and ``pipeline.results``."""
