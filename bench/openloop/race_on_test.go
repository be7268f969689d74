//go:build race

package openloop

// raceEnabled skips the allocation count: the race detector allocates.
const raceEnabled = true
