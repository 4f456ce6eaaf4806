//go:build race

package core

// raceEnabled: checksum send buffers of started calls (see Handle).
const raceEnabled = true
