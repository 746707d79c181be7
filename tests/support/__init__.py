"""What the tests and the benchmarks share: polling, child processes, readiness waits, identities, the dev stack."""
