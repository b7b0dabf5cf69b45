"""The scheduler: APScheduler interval sweeps over the promise ledger (`python -m scheduler` runs it alone)."""
