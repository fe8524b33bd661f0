"""Tables and checkpoints on S3 (`s3a://`): engine settings and a local server."""
