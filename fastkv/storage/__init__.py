"""What a member keeps on disk: the data directory layout and store snapshots."""
