"""Offline (batch) inference: `gateway batch` over Parquet, CSV and JSON-lines files, through the
same InferenceService, routing and metrics as the HTTP path (README "Batch inference").

`plan` checks a job, `columns` maps columns to model inputs, `files` reads and writes chunks,
`predict` is the per-chunk function, `checkpoint` makes a job resumable, `engine` runs it here,
`ray_engine` on Ray Data, and `command` is its command line.
"""
