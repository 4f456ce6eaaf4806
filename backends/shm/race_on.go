//go:build race

package shm

// raceEnabled: the race detector would see the loads of peers' buffers
// while they are written (in tests whose ranks are goroutines) as races.
const raceEnabled = true
