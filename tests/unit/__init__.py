"""Unit tests: no services, no network; fakes allowed for collaborators."""
