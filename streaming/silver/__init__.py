"""Silver: typed, validated, deduplicated, PII-masked, geofenced tables from Bronze.

Input: `bronze/<entity>` (Delta streaming source, append-only). Outputs per micro-batch:
`silver/<entity>` (append of the rows no dedup key has seen), `quarantine/<entity>` (every
rejected row with raw bytes, Kafka coordinates, stage, rule ids, reason, batch id),
`silver/_duplicates/<entity>` (coordinates of every removed duplicate) and, for telemetry,
`silver/vehicle_state` (latest state per vehicle in event-time order).
Delivery: exactly-once per table; each write carries (txnAppId = query name, txnVersion = batch
id), so replaying a batch id changes nothing. Accounting: every Bronze row lands exactly once in
Silver, quarantine or duplicates (`lakehouse verify` checks it).
"""
