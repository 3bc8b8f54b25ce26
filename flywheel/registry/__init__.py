"""The registry: who may call (`keys`), which model holds which alias (`deployments`), the gate
that decides a promotion (`gate`), promotion and rollback (`promotion`), and the live canary
that `settle` promotes or rolls back from users' thumbs (`canary`)."""
