//go:build race

package edge

// raceEnabled shortens the floods: the race detector makes them ~10x slower.
const raceEnabled = true
