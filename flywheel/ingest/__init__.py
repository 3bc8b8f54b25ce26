"""Ingestion: an incoming interaction or feedback item validated and PII-redacted into a row
(`records`, `pii`), and rows written to and read from the store (`interactions`)."""
