"""Silver: typed, validated, deduplicated, PII-masked, geofenced rows, one batch at a time.

Input: a batch's Bronze rows of one entity (from the pipeline's batch writer). Outputs:
`silver/<entity>` (the rows no dedup key has seen), `quarantine/<entity>` (every rejected row
with raw bytes, Kafka coordinates, stage, rule ids, reason, batch id; duplicates with stage
`duplicate`) and, for telemetry, `silver/vehicle_state` (latest state per vehicle in event-time
order). Exactly-once per table through the pipeline's commit guard (`streaming.commits`).
Accounting: every Bronze row lands exactly once in Silver or quarantine (`lakehouse verify`).
"""
