// Package affinity places the ranks a launcher starts on CPUs, the way
// mpirun's --bind-to does, for the one case where it pays on every machine:
// more ranks on a node than CPUs to run them. The kernel then places freshly
// started ranks as it pleases (three on one CPU and one on the other is
// common) and rebalances only every few milliseconds, while ranks that wait
// by yielding to each other keep it from seeing an imbalance; a latency
// measurement then depends on that lottery. Binding rank i to CPU i mod N
// spreads them evenly. With at least one CPU per rank nothing is bound: the
// kernel spreads busy ranks by itself, and a rank bound to one CPU would
// share it with its own runtime's threads. Procs shares the CPUs out among
// the ranks' Go runtimes.
package affinity

import (
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mode is a binding policy.
type Mode string

// Policies. Auto binds only when ranks outnumber the CPUs.
const (
	Auto Mode = "auto"
	None Mode = "none"
	CPU  Mode = "cpu" // one CPU per rank, round robin
)

// Parse checks a -bind flag's value.
func Parse(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Auto, None, CPU:
		return m, nil
	}
	return "", fmt.Errorf("binding %q: want auto, none or cpu", s)
}

// Plan returns the CPU for each of n local ranks under mode m, or nil when
// they are left to the kernel. The CPUs are those this process may use.
func Plan(m Mode, n int) ([]int, error) {
	if m == None || n <= 0 {
		return nil, nil
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("reading this process's CPUs: %w", err)
	}
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 || (m == Auto && n <= len(cpus)) {
		return nil, nil
	}
	plan := make([]int, n)
	for i := range plan {
		plan[i] = cpus[i%len(cpus)]
	}
	return plan, nil
}

// Start starts cmd bound to cpu, or plainly when cpu < 0. The child
// inherits the mask of the thread that forks it, so the fork happens on a
// thread locked to this call whose mask is narrowed first and restored
// after. The thread must live on, not exit: a child's Pdeathsig fires when
// the thread that forked it ends.
func Start(cmd *exec.Cmd, cpu int) error {
	if cpu < 0 {
		return cmd.Start()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			done <- fmt.Errorf("reading this thread's CPUs: %w", err)
			return
		}
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- fmt.Errorf("binding to CPU %d: %w", cpu, err)
			return
		}
		done <- cmd.Start()
		if unix.SchedSetaffinity(0, &old) != nil {
			// Never hand a narrowed thread back to the scheduler, and
			// never let it exit (that would kill the child): park it.
			select {}
		}
	}()
	return <-done
}

// Procs returns environ with GOMAXPROCS set to this process's CPUs shared
// out among n local ranks (at least 1), and the "GOMAXPROCS=k" it added,
// unless environ sets GOMAXPROCS already: the user's choice wins, and set
// is "". It is what torchrun's OMP_NUM_THREADS=1
// is to PyTorch workers. Each Go rank would otherwise run its goroutines
// (a tcp backend's sender beside the caller reading and reducing) on as
// many threads as the node has CPUs, and n ranks' threads then take the
// CPUs from each other in kernel time slices instead of switching
// goroutines in user space. A bound rank gets 1 either way (the runtime
// counts its CPUs).
func Procs(environ []string, n int) (env []string, set string, err error) {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			return environ, "", nil
		}
	}
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return nil, "", fmt.Errorf("reading this process's CPUs: %w", err)
	}
	set = "GOMAXPROCS=" + strconv.Itoa(max(1, cpus.Count()/max(1, n)))
	return append(environ[:len(environ):len(environ)], set), set, nil
}
