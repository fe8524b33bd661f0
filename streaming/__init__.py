"""lakehouse: streaming ingestion, Kafka -> Bronze -> Silver -> Gold on Spark and Delta Lake."""

__version__ = "0.1.0"
