"""Tables and checkpoints on S3 (`s3a://`): engine settings, the writer lease, a local server."""
