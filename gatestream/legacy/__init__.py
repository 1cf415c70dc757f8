"""Legacy import: plain-PostgreSQL tables of the product into the hypertables (seed 000 §8)."""
