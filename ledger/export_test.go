package ledger

// SetRelayBeforeDelete makes relay rounds call f after their records were
// acked and before their rows are deleted (an error stops the round there,
// as a crash would), until restore is called.
func SetRelayBeforeDelete(f func() error) (restore func()) {
	old := relayBeforeDelete
	relayBeforeDelete = f
	return func() { relayBeforeDelete = old }
}
