"""The fleet simulator: vehicles moving over the NYC taxi zones, bookings, app sessions,
external feeds and photo feedback, published to Kafka with a ledger of every acknowledged record.

`SIMULATED` are the entities it knows how to make; the service's entities are its contracts.
"""

SIMULATED: tuple[str, ...] = ("telemetry", "bookings", "user_events", "external", "feedback")
