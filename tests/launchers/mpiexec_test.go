package launchers

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// mpiexec finds MPICH's hydra.
func mpiexec(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs mpiexec")
	}
	p, err := exec.LookPath("mpiexec.mpich")
	if err != nil {
		t.Skip("mpiexec.mpich not found (apt-get install -y mpich)")
	}
	return p
}

// Under hydra with nothing exported, the ranks meet through PMI: hello
// and a checked allreduce at np 2 and 4, over PMI-2 (the default), PMI-1
// and hydra's -pmi-port mode (no PMI_RANK; the rank comes from PMI).
func TestMpiexec(t *testing.T) {
	mpiexec := mpiexec(t)
	hello := hello(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, np := range []int{2, 4} {
		n := strconv.Itoa(np)
		t.Run("hello/np"+n, func(t *testing.T) {
			out, err := run(t, cleanEnv(), mpiexec, "-n", n, hello)
			if err != nil {
				t.Fatalf("mpiexec.mpich -n %d hello: %v\n%s", np, err, out)
			}
			checkHello(t, out, np)
		})
		t.Run("allreduce/np"+n, func(t *testing.T) {
			out, err := run(t, cleanEnv(envChild+"=allreduce"), mpiexec, "-n", n, exe)
			if err != nil {
				t.Fatalf("mpiexec.mpich -n %d: %v\n%s", np, err, out)
			}
			checkAllreduce(t, out, np)
		})
	}
	t.Run("hello/PMI-1", func(t *testing.T) {
		out, err := run(t, cleanEnv("GOCOLL_PMI=1"), mpiexec, "-n", "3", hello)
		if err != nil {
			t.Fatalf("GOCOLL_PMI=1 mpiexec.mpich -n 3 hello: %v\n%s", err, out)
		}
		checkHello(t, out, 3)
	})
	for _, v := range []string{"1", "2"} {
		t.Run("hello/pmi-port/PMI-"+v, func(t *testing.T) {
			out, err := run(t, cleanEnv("GOCOLL_PMI="+v), mpiexec, "-pmi-port", "-n", "3", hello)
			if err != nil {
				t.Fatalf("GOCOLL_PMI=%s mpiexec.mpich -pmi-port -n 3 hello: %v\n%s", v, err, out)
			}
			checkHello(t, out, 3)
		})
	}
	// The PMI client alone, on each protocol and transport.
	for _, v := range []int{1, 2} {
		for _, mode := range [][]string{nil, {"-pmi-port"}} {
			name := "pmi-" + strconv.Itoa(v) + "/PMI_FD"
			if mode != nil {
				name = "pmi-" + strconv.Itoa(v) + "/PMI_PORT"
			}
			t.Run(name, func(t *testing.T) {
				args := append(append([]string{}, mode...), "-n", "3", exe)
				out, err := run(t, cleanEnv(envChild+"=pmi"+strconv.Itoa(v)), mpiexec, args...)
				if err != nil {
					t.Fatalf("mpiexec.mpich %v: %v\n%s", args, err, out)
				}
				checkPMI(t, out, v, 3)
			})
		}
	}
	// Two hydra proxies on this machine, one per "host", look like two
	// nodes (MPI_LOCALNRANKS=1): rank 0 then listens on every interface
	// and advertises a non-loopback address of its host.
	t.Run("hello/two-proxies", func(t *testing.T) {
		host, err := os.Hostname()
		if err != nil {
			t.Fatal(err)
		}
		out, err := run(t, cleanEnv(), mpiexec, "-hosts", "localhost:1,"+host+":1", "-n", "2", hello)
		if err != nil {
			if strings.Contains(out, "ssh") || strings.Contains(out, "bootstrap") {
				t.Skipf("hydra does not take localhost and %s for this machine: %v\n%s", host, err, out)
			}
			t.Fatalf("mpiexec.mpich -hosts localhost:1,%s:1 -n 2 hello: %v\n%s", host, err, out)
		}
		checkHello(t, out, 2)
		i := strings.Index(out, "store ")
		if i < 0 {
			t.Fatalf("no store address in the output:\n%s", out)
		}
		addr, _, _ := strings.Cut(out[i+len("store "):], ")")
		h, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(h); err != nil || ip == nil || ip.IsLoopback() {
			t.Errorf("rank 0 advertised %q; want a non-loopback address", addr)
		}
	})
	t.Run("init-time/np8", func(t *testing.T) {
		out, err := run(t, cleanEnv(envChild+"=allreduce"), mpiexec, "-n", "8", exe)
		if err != nil {
			t.Fatalf("mpiexec.mpich -n 8: %v\n%s", err, out)
		}
		reportInit(t, "mpiexec.mpich", checkAllreduce(t, out, 8))
	})
}
