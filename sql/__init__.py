"""The ordered, idempotent SQL migrations (package data: gatestream.sql); see gatestream.migrate."""
