package affinity

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func allowed(t *testing.T) int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	return set.Count()
}

func TestPlan(t *testing.T) {
	n := allowed(t)
	if p, err := Plan(Auto, n); err != nil || p != nil {
		t.Errorf("Plan(auto, %d CPUs' worth of ranks) = %v, %v; want no binding", n, p, err)
	}
	if p, err := Plan(None, 4*n); err != nil || p != nil {
		t.Errorf("Plan(none) = %v, %v; want no binding", p, err)
	}
	p, err := Plan(Auto, 2*n+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 2*n+1 {
		t.Fatalf("Plan(auto, %d) has %d entries", 2*n+1, len(p))
	}
	per := map[int]int{}
	for _, c := range p {
		per[c]++
	}
	if len(per) != n {
		t.Errorf("Plan(auto, %d) uses %d CPUs, want all %d: %v", 2*n+1, len(per), n, p)
	}
	for c, k := range per {
		if k < 2 || k > 3 {
			t.Errorf("CPU %d gets %d of %d ranks on %d CPUs: %v", c, k, 2*n+1, n, p)
		}
	}
	if p, _ := Plan(CPU, 1); len(p) != 1 {
		t.Errorf("Plan(cpu, 1) = %v, want one binding", p)
	}
	if _, err := Parse("core"); err == nil {
		t.Error("Parse(core) succeeded")
	}
}

// TestStartBinds starts a child on the last allowed CPU and reads its mask
// from /proc; the launcher's own threads keep their mask.
func TestStartBinds(t *testing.T) {
	p, err := Plan(CPU, allowed(t))
	if err != nil {
		t.Fatal(err)
	}
	cpu := p[len(p)-1]
	cmd := exec.Command("grep", "Cpus_allowed_list", "/proc/self/status")
	var out strings.Builder
	cmd.Stdout = &out
	if err := Start(cmd, cpu); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	got := strings.TrimSpace(strings.TrimPrefix(out.String(), "Cpus_allowed_list:"))
	if got != strconv.Itoa(cpu) {
		t.Errorf("child's CPUs: %q, want %d", got, cpu)
	}
	if n := allowed(t); n != len(p) {
		t.Errorf("the launcher's thread now has %d CPUs, want %d", n, len(p))
	}
	if err := Start(exec.Command("true"), 1<<20); err == nil {
		t.Error("binding to CPU 1<<20 succeeded")
	}
}

func TestProcs(t *testing.T) {
	n := allowed(t)
	for _, c := range []struct{ ranks, want int }{{1, n}, {n, 1}, {4 * n, 1}, {0, n}} {
		env, set, err := Procs([]string{"A=1"}, c.ranks)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"A=1", "GOMAXPROCS=" + strconv.Itoa(c.want)}
		if strings.Join(env, " ") != strings.Join(want, " ") || set != want[1] {
			t.Errorf("Procs(%d ranks on %d CPUs) = %q, %q; want %q, %q", c.ranks, n, env, set, want, want[1])
		}
	}
	env, set, err := Procs([]string{"GOMAXPROCS=7", "B=2"}, 4*n)
	if err != nil || strings.Join(env, " ") != "GOMAXPROCS=7 B=2" || set != "" {
		t.Errorf("Procs with GOMAXPROCS set = %q, %q, %v; want it left alone", env, set, err)
	}
}
