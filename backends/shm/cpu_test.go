package shm

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNudgeMovesThread: nudge takes the calling thread off its CPU and
// gives it its whole mask back.
func TestNudgeMovesThread(t *testing.T) {
	b := &Backend{}
	if err := unix.SchedGetaffinity(0, &b.cpus); err != nil {
		t.Fatal(err)
	}
	if b.cpus.Count() < 2 {
		t.Skip("needs two CPUs")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := currentCPU()
	if before == 0 {
		t.Skip("the CPU number is unknown here")
	}
	b.nudge(before - 1)
	if after := currentCPU(); after == before {
		t.Errorf("still on CPU %d after nudge", after-1)
	}
	var now unix.CPUSet
	if err := unix.SchedGetaffinity(0, &now); err != nil {
		t.Fatal(err)
	}
	if now != b.cpus {
		t.Errorf("mask after nudge has %d CPUs, want the %d it had", now.Count(), b.cpus.Count())
	}
	if b.nudges != 1 {
		t.Errorf("nudges = %d, want 1", b.nudges)
	}
}
