"""A site's node: ingestion, store, policy, cohort and endpoints, releases, audit and daemon."""
