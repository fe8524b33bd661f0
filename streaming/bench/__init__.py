"""`lakehouse bench`: throughput and freshness of the pipeline on this machine.

A fixed corpus of simulator telemetry is preloaded into Kafka, then drained by a ladder of ever
longer chains (raw consumer, Spark's Kafka source into a no-op sink, the `bronze` pipeline, the
`all` pipeline with the seconds each layer took), each timed and metered on its own. A rate
ladder then feeds a streaming pipeline (`all`, or `bronze` alone) at fixed rates and records
whether Kafka lag stays flat and how fresh Bronze, Silver and Gold stay. Results go to JSON, a
Markdown table and a chart.
"""
