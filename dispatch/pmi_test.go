package dispatch

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/gocoll/gocoll/internal/memstore"
)

// hydra is what mpiexec.mpich 4.0 gives rank 1 of 4 on one node.
var hydra = []string{"PMI_RANK=1", "PMI_SIZE=4", "PMI_FD=6", "MPI_LOCALRANKID=1", "MPI_LOCALNRANKS=4"}

// srunPMI2 is what srun --mpi=pmi2 gives rank 1 of 4 (trimmed).
var srunPMI2 = []string{"PMI_RANK=1", "PMI_SIZE=4", "PMI_FD=11", "PMI_JOBID=1.0", "SLURM_PROCID=1", "SLURM_NTASKS=4",
	"SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NODELIST=vm", "SLURM_STEP_NUM_NODES=1"}

func plus(base []string, extra ...string) []string {
	return append(append([]string{}, base...), extra...)
}

// What Init leaves to PMI: whatever of the store's address and the secret
// the environment and options do not give, and nothing outside hydra and
// srun --mpi=pmi2.
func TestResolvePMI(t *testing.T) {
	for _, tc := range []struct {
		name           string
		env            []string
		opts           []Option
		version        int
		master, secret bool
		host, port     string
		wantMaster     string // l.master
	}{
		{"hydra, nothing set", hydra, nil, 2, true, true, "", "", ""},
		{"srun --mpi=pmi2, nothing set", srunPMI2, nil, 2, true, true, "", "", ""},
		{"srun --mpi=pmi2 with the secret", plus(srunPMI2, "GOCOLL_SECRET=s"), nil, 2, true, false, "", "", ""},
		{"PMI_PORT", []string{"PMI_RANK=0", "PMI_SIZE=2", "PMI_PORT=vm:1", "PMI_ID=0"}, nil, 2, true, true, "", "", ""},
		{"secret given", plus(hydra, "GOCOLL_SECRET=s"), nil, 2, true, false, "", "", ""},
		{"address given", plus(hydra, "MASTER_ADDR=h", "MASTER_PORT=1"), nil, 2, false, true, "", "", "h:1"},
		{"WithMaster", hydra, []Option{WithMaster("m:2")}, 2, false, true, "", "", "m:2"},
		{"everything given", plus(hydra, "MASTER_ADDR=h", "MASTER_PORT=1", "GOCOLL_SECRET=s"), nil, 0, false, false, "", "", "h:1"},
		{"MASTER_ADDR alone", plus(hydra, "MASTER_ADDR=10.0.0.5"), nil, 2, true, true, "10.0.0.5", "", ""},
		{"MASTER_PORT alone", plus(hydra, "MASTER_PORT=29500"), nil, 2, true, true, "", "29500", ""},
		{"PMI-1", plus(hydra, "GOCOLL_PMI=1"), nil, 1, true, true, "", "", ""},
		{"PMI-2 asked", plus(hydra, "GOCOLL_PMI=2"), nil, 2, true, true, "", "", ""},
		{"one rank", []string{"PMI_RANK=0", "PMI_SIZE=1", "PMI_FD=6"}, nil, 0, false, false, "", "", ""},
		{"WithStore", hydra, []Option{WithStore(memstore.New())}, 0, false, false, "", "", ""},
		// Plain srun has no PMI connection: the address is derived.
		{"plain srun", []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0",
			"SLURM_STEP_NODELIST=vm", "GOCOLL_SECRET=s"}, nil, 0, false, false, "", "", "vm:61537"},
		// Open MPI never offers PMI_FD; a stray one is not read.
		{"Open MPI", []string{"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4", "PMI_FD=6", "MASTER_ADDR=h",
			"MASTER_PORT=1", "GOCOLL_SECRET=s"}, nil, 0, false, false, "", "", "h:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := resolve(buildOptions(tc.opts), envOf(tc.env...))
			if err != nil {
				t.Fatal(err)
			}
			if l.pmi != tc.version || l.pmiMaster != tc.master || l.pmiSecret != tc.secret || l.pmiHost != tc.host ||
				l.pmiPort != tc.port || l.master != tc.wantMaster {
				t.Errorf("pmi %d master %v secret %v host %q port %q, l.master %q; want pmi %d master %v secret %v host %q port %q, l.master %q",
					l.pmi, l.pmiMaster, l.pmiSecret, l.pmiHost, l.pmiPort, l.master,
					tc.version, tc.master, tc.secret, tc.host, tc.port, tc.wantMaster)
			}
		})
	}
}

func TestResolvePMIErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want []string
	}{
		{"bad GOCOLL_PMI", plus(hydra, "GOCOLL_PMI=3"), []string{`GOCOLL_PMI="3": want auto, 2, 1 or off`}},
		{"PMI off", plus(hydra, "GOCOLL_PMI=off"), []string{"4 ranks need a store: set MASTER_ADDR"}},
		{"PMI off, address set", plus(hydra, "GOCOLL_PMI=off", "MASTER_ADDR=h", "MASTER_PORT=1"), []string{"GOCOLL_SECRET is not set"}},
		{"bad MASTER_PORT", plus(hydra, "MASTER_PORT=x"), []string{`MASTER_PORT="x" is not a port number`}},
		{"empty MASTER_ADDR", plus(hydra, "MASTER_ADDR="), []string{"MASTER_ADDR is empty"}},
		{"plain srun without secret", []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0",
			"SLURM_STEP_NODELIST=vm"}, []string{"GOCOLL_SECRET is not set", "srun --mpi=pmi2", "nothing exported"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(buildOptions(nil), envOf(tc.env...))
			if err == nil {
				t.Fatalf("no error; want one containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v; want one containing %q", err, w)
				}
			}
		})
	}
}

// Where rank 0 serves the store when PMI tells the others.
func TestPMIStoreHost(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name         string
		env          []string
		host, listen string // "" listen: every interface; "*" host: any non-loopback address
	}{
		{"hydra on one node", hydra, "127.0.0.1", "127.0.0.1"},
		{"srun on one node", srunPMI2, "127.0.0.1", "127.0.0.1"},
		{"MASTER_ADDR alone", plus(hydra, "MASTER_ADDR=node3"), "node3", ""},
		{"loopback MASTER_ADDR", plus(hydra, "MASTER_ADDR=127.0.0.2"), "127.0.0.2", "127.0.0.2"},
		{"hydra on two nodes", []string{"PMI_RANK=0", "PMI_SIZE=4", "PMI_FD=6", "MPI_LOCALRANKID=0", "MPI_LOCALNRANKS=2"}, "*", ""},
		{"srun on two nodes", plus(srunPMI2, "SLURM_STEP_NUM_NODES=2"), "*", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := envOf(tc.env...)
			l, err := resolve(buildOptions(nil), env)
			if err != nil {
				t.Fatal(err)
			}
			host, listen, err := pmiStoreHost(ctx, l, env)
			if err != nil {
				if tc.host == "*" {
					t.Skipf("this machine has no non-loopback address: %v", err)
				}
				t.Fatal(err)
			}
			if listen != tc.listen {
				t.Errorf("listen on %q; want %q", listen, tc.listen)
			}
			if tc.host == "*" {
				if ip := net.ParseIP(host); ip == nil || ip.IsLoopback() || !ip.IsGlobalUnicast() {
					t.Errorf("host %q; want a non-loopback unicast address", host)
				}
			} else if host != tc.host {
				t.Errorf("host %q; want %q", host, tc.host)
			}
		})
	}
}

func TestPickIP(t *testing.T) {
	ips := func(s ...string) []net.IP {
		var out []net.IP
		for _, a := range s {
			out = append(out, net.ParseIP(a))
		}
		return out
	}
	for _, tc := range []struct {
		in   []net.IP
		want string
	}{
		{ips("127.0.1.1", "10.0.0.2"), "10.0.0.2"},
		{ips("fd00::2", "192.0.2.2"), "192.0.2.2"},
		{ips("fe80::1", "fd00::2"), "fd00::2"},
		{ips("127.0.0.1", "::1", "fe80::1"), "<nil>"},
	} {
		if got := pickIP(tc.in).String(); got != tc.want {
			t.Errorf("pickIP(%v) = %s; want %s", tc.in, got, tc.want)
		}
	}
}

func TestParseDefaultRoute(t *testing.T) {
	table := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth1\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
	if got := parseDefaultRoute(strings.NewReader(table)); got != "eth0" {
		t.Errorf("default route on %q; want eth0", got)
	}
	if got := parseDefaultRoute(strings.NewReader(table[:strings.Index(table, "eth0")])); got != "" {
		t.Errorf("default route on %q; want none", got)
	}
}

// A second Init in a process that met through PMI says what to set,
// rather than read a descriptor that may since name another file.
func TestPMIOncePerProcess(t *testing.T) {
	if !pmiClaimed.CompareAndSwap(false, true) {
		t.Skip("this test process already used PMI")
	}
	defer pmiClaimed.Store(false)
	_, err := Init(context.Background(), WithEnviron(hydra))
	if err == nil || !strings.Contains(err.Error(), "serves one Init per process") || !strings.Contains(err.Error(), "MASTER_ADDR") {
		t.Errorf("err = %v", err)
	}
}
