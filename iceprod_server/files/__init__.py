"""Files: downloads and uploads under ``<data-dir>/files``, and the caching file proxy."""
