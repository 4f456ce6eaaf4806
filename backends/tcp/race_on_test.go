//go:build race

package tcp

// raceEnabled: the race detector's instrumentation allocates on its own.
const raceEnabled = true
