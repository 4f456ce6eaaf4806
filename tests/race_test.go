//go:build race

package tests

// raceEnabled: ranks built with the race detector run about ten times
// slower, so the suite trims itself to stay within go test's timeout.
const raceEnabled = true
