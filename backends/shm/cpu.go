package shm

import (
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"
)

// Which CPU a rank runs on decides how it waits. A peer on another CPU
// makes progress while this rank spins, so spinning on plain loads is
// cheapest (a line transfer); yielding would only add a system call, which
// costs several line transfers even when there is nothing else to run. A
// peer that shares this CPU cannot run until this rank gives the CPU up,
// so then the waiter yields at once. Each rank publishes its CPU in its cold line while
// it waits; waiters read their peers'. The CPU is a hint that can be a
// moment stale; it changes only how long a wait takes, never its result.

// hasRDTSCP: the CPU number is then one unprivileged instruction away
// (Linux keeps it in IA32_TSC_AUX), not a system call.
var hasRDTSCP = cpuid.CPU.Has(cpuid.RDTSCP)

// currentCPU returns the CPU the calling thread runs on, plus one (zero
// means unknown).
func currentCPU() uint32 {
	if hasRDTSCP {
		return cpuid.CPU.Ia32TscAux()&0xfff + 1 // Linux: node<<12 | cpu
	}
	var cpu uint32
	if _, _, e := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), 0, 0); e != 0 {
		return 0
	}
	return cpu + 1
}

// crowded refreshes this rank's published CPU and reports whether another
// local rank was last seen on the same one. Two ranks that share a CPU
// while the node has one for each are a start-up accident that the kernel
// can take long to mend (ranks that yield to each other look balanced to
// it); the higher-ranked of the two then moves itself (see nudge). It
// happens again and again, not only at start-up: the Go scheduler moves a
// goroutine between threads (after preemption, a collection), and the
// thread it lands on may sit on the peer's CPU.
func (b *Backend) crowded() bool {
	me := b.cold[b.rank]
	c := currentCPU()
	if c == 0 {
		return b.oversub // no idea: assume the worst when ranks outnumber CPUs
	}
	if atomic.LoadUint32(&me.cpu) != c {
		atomic.StoreUint32(&me.cpu, c)
	}
	shared := false
	for _, j := range b.peers {
		if atomic.LoadUint32(&b.cold[j].cpu) == c {
			shared = true
			if j < b.rank && !b.oversub && b.mayNudge() {
				b.nudge(c - 1)
				return false
			}
		}
	}
	return shared
}

// nudgeEvery bounds how often a rank moves itself: the kernel may have
// reasons to keep it where it is (another job on the other CPUs), and
// then a move every millisecond costs ~1% of a CPU. Ranks that the kernel
// leaves alone are nudged far less often: the Go scheduler preempts a
// spinning goroutine every 10 ms, and the thread that takes it up again,
// or wakes its locked thread, often runs on the peer's CPU, where the
// kernel's wake-up placement puts the rank too: a rank must be able to
// move again soon after a move, and a small message costs an order of
// magnitude more while two ranks share a CPU.
const nudgeEvery = time.Millisecond

// mayNudge reports whether nudgeEvery has passed since the last move.
func (b *Backend) mayNudge() bool {
	now := since()
	if b.nudges > 0 && now-b.lastNudge < nudgeEvery {
		return false
	}
	b.lastNudge = now
	return true
}

// nudge moves the calling thread off CPU cpu: it narrows the thread's mask
// to the others it may use, which migrates it at once, and then restores the
// mask, which leaves it where it now runs.
func (b *Backend) nudge(cpu uint32) {
	b.nudges++
	if !b.cpus.IsSet(int(cpu)) || b.cpus.Count() < 2 {
		return
	}
	away := b.cpus
	away.Clear(int(cpu))
	runtime.LockOSThread() // both calls must name the same thread
	defer runtime.UnlockOSThread()
	if unix.SchedSetaffinity(0, &away) == nil {
		unix.SchedSetaffinity(0, &b.cpus)
	}
}
