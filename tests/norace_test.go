//go:build !race

package tests

// raceEnabled: see race_test.go.
const raceEnabled = false
