package dispatch

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gocoll/gocoll/internal/memstore"
)

func envOf(kv ...string) envLookup {
	m := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

var master = []string{"MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500", "GOCOLL_SECRET=s3cret"}

func with(extra ...string) []string { return append(append([]string{}, master...), extra...) }

func TestResolveConventions(t *testing.T) {
	type want struct {
		Source                                     string
		Rank, Size, LocalRank, LocalSize, NodeRank int
	}
	for _, tc := range []struct {
		name string
		env  []string
		opts []Option
		want want
	}{
		{"torchrun", with("RANK=3", "WORLD_SIZE=8", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=2", "GROUP_RANK=1"), nil,
			want{"torchrun", 3, 8, 1, 2, 1}},
		{"torchrun without local", with("RANK=0", "WORLD_SIZE=2"), nil, want{"torchrun", 0, 2, -1, -1, -1}},
		{"Open MPI", with("OMPI_COMM_WORLD_RANK=5", "OMPI_COMM_WORLD_SIZE=6", "OMPI_COMM_WORLD_LOCAL_RANK=2", "OMPI_COMM_WORLD_LOCAL_SIZE=3"), nil,
			want{"Open MPI", 5, 6, 2, 3, -1}},
		{"MPICH", with("PMI_RANK=1", "PMI_SIZE=4", "MPI_LOCALRANKID=1", "MPI_LOCALNRANKS=4"), nil,
			want{"MPICH/Intel MPI", 1, 4, 1, 4, -1}},
		{"Slurm", with("SLURM_PROCID=7", "SLURM_NTASKS=16", "SLURM_LOCALID=3", "SLURM_NODEID=1"), nil,
			want{"Slurm", 7, 16, 3, -1, 1}},
		{"Slurm old spelling", with("SLURM_PROCID=1", "SLURM_NPROCS=2"), nil, want{"Slurm", 1, 2, -1, -1, -1}},
		// Nested launchers: the innermost wins.
		{"mpirun inside sbatch", with("SLURM_PROCID=0", "SLURM_NTASKS=4", "OMPI_COMM_WORLD_RANK=3", "OMPI_COMM_WORLD_SIZE=4"), nil,
			want{"Open MPI", 3, 4, -1, -1, -1}},
		{"torchrun under mpirun", with("OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2", "RANK=6", "WORLD_SIZE=8"), nil,
			want{"torchrun", 6, 8, -1, -1, -1}},
		{"srun with PMI", with("SLURM_PROCID=2", "SLURM_NTASKS=4", "PMI_RANK=2", "PMI_SIZE=4"), nil,
			want{"MPICH/Intel MPI", 2, 4, -1, -1, -1}},
		// Options override the environment.
		{"options override", with("RANK=3", "WORLD_SIZE=8"), []Option{WithRank(1), WithSize(2)}, want{"torchrun", 1, 2, -1, -1, -1}},
		{"options only", master, []Option{WithRank(1), WithSize(2)}, want{"options", 1, 2, -1, -1, -1}},
		{"rank option, env size", with("WORLD_SIZE=4"), []Option{WithRank(2)}, want{"torchrun", 2, 4, -1, -1, -1}},
		{"standalone", nil, nil, want{"standalone", 0, 1, -1, -1, -1}},
		{"spaces tolerated", with("RANK= 1 ", "WORLD_SIZE=2"), nil, want{"torchrun", 1, 2, -1, -1, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := buildOptions(tc.opts)
			l, err := resolve(o, envOf(tc.env...))
			if err != nil {
				t.Fatal(err)
			}
			got := want{l.source, l.rank, l.size, l.localRank, l.localSize, l.nodeRank}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestResolveSettings(t *testing.T) {
	base := with("RANK=0", "WORLD_SIZE=2")
	l, err := resolve(buildOptions(nil), envOf(append(base, "GOCOLL_TIMEOUT=90s", "GOCOLL_BACKEND=kv", "GOCOLL_NODE_ID=n1", "GOCOLL_JOB_ID=j", "GOCOLL_LAUNCHER_STORE=1")...))
	if err != nil {
		t.Fatal(err)
	}
	if l.master != "10.0.0.1:29500" || string(l.secret) != "s3cret" || l.timeout != 90*time.Second ||
		l.backend != "kv" || l.nodeID != "n1" || l.jobID != "j" || !l.launcherStore {
		t.Errorf("from env: %+v", l)
	}
	l, err = resolve(buildOptions([]Option{WithMaster("[::1]:1234"), WithSecret([]byte("o")), WithTimeout(time.Second),
		WithBackend("tcp"), WithNodeID("n2"), WithJobID("k")}), envOf(append(base, "GOCOLL_TIMEOUT=7", "GOCOLL_BACKEND=kv", "GOCOLL_NODE_ID=n1")...))
	if err != nil {
		t.Fatal(err)
	}
	if l.master != "[::1]:1234" || string(l.secret) != "o" || l.timeout != time.Second || l.backend != "tcp" || l.nodeID != "n2" || l.jobID != "k" {
		t.Errorf("options must override env: %+v", l)
	}
	l, _ = resolve(buildOptions(nil), envOf(append(base, "GOCOLL_TIMEOUT=2.5")...))
	if l.timeout != 2500*time.Millisecond {
		t.Errorf("GOCOLL_TIMEOUT=2.5 gave %v", l.timeout)
	}
	l, _ = resolve(buildOptions(nil), envOf(base...))
	if l.timeout != DefaultTimeout || l.backend != "auto" {
		t.Errorf("defaults: timeout %v backend %q", l.timeout, l.backend)
	}
	// WithRank and WithSize make another job than the launcher's: its
	// local layout no longer applies (it used to fail "local size 4
	// exceeds WithSize=2"), while the rest of the environment still does.
	l, err = resolve(buildOptions([]Option{WithStore(memstore.New()), WithRank(1), WithSize(2)}),
		envOf("RANK=5", "WORLD_SIZE=8", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=4", "GROUP_RANK=1", "GOCOLL_TIMEOUT=7s", "GOCOLL_BACKEND=tcp"))
	if err != nil {
		t.Fatalf("WithRank and WithSize under a launcher's variables: %v", err)
	}
	if l.rank != 1 || l.size != 2 || l.localRank != -1 || l.localSize != -1 || l.nodeRank != -1 ||
		l.timeout != 7*time.Second || l.backend != "tcp" {
		t.Errorf("WithRank(1), WithSize(2) under torchrun's variables: got %+v", l)
	}
	// WithStore needs neither master nor secret.
	if _, err := resolve(buildOptions([]Option{WithStore(memstore.New()), WithRank(0), WithSize(4)}), envOf()); err != nil {
		t.Errorf("WithStore without master or secret: %v", err)
	}
}

// Every error names the variable to fix.
func TestResolveErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		opts []Option
		want string // substring of the error: the variable's name and the problem
	}{
		{"rank without size", with("RANK=1"), nil, "WORLD_SIZE"},
		{"size without rank", with("WORLD_SIZE=2"), nil, "RANK is not"},
		{"rank not below size", with("RANK=2", "WORLD_SIZE=2"), nil, "RANK=2 is not below WORLD_SIZE=2"},
		{"zero size", with("RANK=0", "WORLD_SIZE=0"), nil, "WORLD_SIZE=0"},
		{"rank not a number", with("RANK=one", "WORLD_SIZE=2"), nil, `RANK="one"`},
		{"negative size", with("RANK=0", "WORLD_SIZE=-2"), nil, `WORLD_SIZE="-2"`},
		{"local rank not below local size", with("RANK=0", "WORLD_SIZE=4", "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"), nil, "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"},
		{"local size zero", with("RANK=0", "WORLD_SIZE=4", "LOCAL_WORLD_SIZE=0"), nil, "LOCAL_WORLD_SIZE=0"},
		{"local size above size", with("RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=4"), nil, "exceeds WORLD_SIZE=2"},
		{"bad local rank", with("RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=x"), nil, "LOCAL_RANK"},
		{"ompi rank without size", with("OMPI_COMM_WORLD_RANK=0"), nil, "OMPI_COMM_WORLD_SIZE"},
		{"ompi rank too big", with("OMPI_COMM_WORLD_RANK=4", "OMPI_COMM_WORLD_SIZE=4"), nil, "OMPI_COMM_WORLD_RANK=4"},
		{"ompi bad local size", with("OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_LOCAL_SIZE=z"), nil, "OMPI_COMM_WORLD_LOCAL_SIZE"},
		{"pmi size without rank", with("PMI_SIZE=4"), nil, "PMI_RANK"},
		{"pmi bad local", with("PMI_RANK=0", "PMI_SIZE=4", "MPI_LOCALRANKID=5", "MPI_LOCALNRANKS=2"), nil, "MPI_LOCALRANKID=5"},
		{"slurm without ntasks", with("SLURM_PROCID=0"), nil, "SLURM_NTASKS"},
		{"slurm rank too big", with("SLURM_PROCID=9", "SLURM_NTASKS=4"), nil, "SLURM_PROCID=9"},
		{"slurm bad localid", with("SLURM_PROCID=0", "SLURM_NTASKS=4", "SLURM_LOCALID=?"), nil, "SLURM_LOCALID"},
		{"slurm bad nodeid", with("SLURM_PROCID=0", "SLURM_NTASKS=4", "SLURM_NODEID=n1"), nil, "SLURM_NODEID"},
		{"torchrun bad group rank", with("RANK=0", "WORLD_SIZE=4", "GROUP_RANK=-1"), nil, "GROUP_RANK"},
		{"option rank too big", with("WORLD_SIZE=2"), []Option{WithRank(2)}, "WithRank=2 is not below WORLD_SIZE=2"},
		{"option rank without size", master, []Option{WithRank(0)}, "WORLD_SIZE"},
		{"no master", []string{"RANK=0", "WORLD_SIZE=2", "GOCOLL_SECRET=s"}, nil, "MASTER_ADDR"},
		{"addr without port", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "GOCOLL_SECRET=s"}, nil, "MASTER_PORT is not"},
		{"port without addr", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_PORT=1", "GOCOLL_SECRET=s"}, nil, "MASTER_ADDR is not"},
		{"bad port", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=http", "GOCOLL_SECRET=s"}, nil, "MASTER_PORT"},
		{"port out of range", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=70000", "GOCOLL_SECRET=s"}, nil, "MASTER_PORT"},
		{"port zero", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=0", "GOCOLL_SECRET=s"}, nil, "MASTER_PORT=0"},
		{"empty addr", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=", "MASTER_PORT=1", "GOCOLL_SECRET=s"}, nil, "MASTER_ADDR is empty"},
		{"bad WithMaster", nil, []Option{WithMaster("nohost")}, "WithMaster"},
		{"no secret", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=1"}, nil, "GOCOLL_SECRET is not set"},
		{"empty secret", []string{"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=1", "GOCOLL_SECRET="}, nil, "GOCOLL_SECRET is set but empty"},
		{"empty WithSecret", master, []Option{WithSecret(nil)}, "WithSecret"},
		{"bad timeout", with("GOCOLL_TIMEOUT=soon"), nil, "GOCOLL_TIMEOUT"},
		{"negative timeout", with("GOCOLL_TIMEOUT=-1s"), nil, "GOCOLL_TIMEOUT"},
		{"bad backend", with("GOCOLL_BACKEND=nccl"), nil, "GOCOLL_BACKEND"},
		{"bad WithBackend", master, []Option{WithBackend("mpi")}, "WithBackend"},
		{"bad launcher flag", with("GOCOLL_LAUNCHER_STORE=yes"), nil, "GOCOLL_LAUNCHER_STORE"},
		{"launcher store without master", []string{"GOCOLL_LAUNCHER_STORE=1"}, nil, "GOCOLL_LAUNCHER_STORE=1 but MASTER_ADDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(buildOptions(tc.opts), envOf(tc.env...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want one containing %q", err, tc.want)
			}
		})
	}
}

// expand lists every host of a parsed hostlist, the rightmost group
// varying fastest, to pin down what parseHostlist understood.
func expand(list []hostPattern) []string {
	var out []string
	for _, p := range list {
		hosts := []string{""}
		for _, part := range p {
			var next []string
			for _, h := range hosts {
				if part.ranges == nil {
					next = append(next, h+part.text)
					continue
				}
				for _, r := range part.ranges {
					for v := r.lo; v <= r.hi; v++ {
						next = append(next, h+padNum(v, r.width))
					}
				}
			}
			hosts = next
		}
		out = append(out, hosts...)
	}
	return out
}

func TestHostlist(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string // substring of the error, for malformed lists
	}{
		{in: "node01", want: []string{"node01"}},
		{in: "node[01-04,07]", want: []string{"node01", "node02", "node03", "node04", "node07"}},
		{in: "a[1-2],b3", want: []string{"a1", "a2", "b3"}},
		{in: "n[8-10]", want: []string{"n8", "n9", "n10"}},
		{in: "n[098-101]", want: []string{"n098", "n099", "n100", "n101"}},
		{in: "n[3]", want: []string{"n3"}},
		{in: "n[07,01-02]", want: []string{"n07", "n01", "n02"}},
		{in: "rack[1-2]-n[08-09]", want: []string{"rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"}},
		{in: "r[1-2]n[3,5],login1,gpu[001-002].x", want: []string{"r1n3", "r1n5", "r2n3", "r2n5", "login1", "gpu001.x", "gpu002.x"}},
		{in: "[1-2]x", want: []string{"1x", "2x"}},
		{in: " h1.example.com,h2 ", want: []string{"h1.example.com", "h2"}},

		{in: "", wantErr: "hostlist is empty"},
		{in: "   ", wantErr: "hostlist is empty"},
		{in: "a,,b", wantErr: "empty host at offset 2"},
		{in: "a,", wantErr: "empty host at offset 2"},
		{in: ",a", wantErr: "empty host at offset 0"},
		{in: "n[1-3", wantErr: "the '[' at offset 1 has no matching ']'"},
		{in: "n[1[2]]", wantErr: "the '[' at offset 1 has no matching ']'"},
		{in: "n1]", wantErr: "the ']' at offset 2 has no matching '['"},
		{in: "n[]", wantErr: "the group is empty"},
		{in: "n[4-2]", wantErr: `range "4-2" runs backwards`},
		{in: "n[a-b]", wantErr: `"a-b" is not a number`},
		{in: "n[1-]", wantErr: `"1-" is not a number`},
		{in: "n[-3]", wantErr: `"-3" is not a number`},
		{in: "n[1,,2]", wantErr: `"" is not a number`},
		{in: "n[1-2-3]", wantErr: `"1-2-3" is not a number`},
		{in: "n[1234567890123456789]", wantErr: "is not a number"},
		{in: "a b", wantErr: "unexpected character ' ' at offset 1"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			list, err := parseHostlist(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, expand(list)); d != "" {
				t.Errorf("expansion (-want +got)\n%s", d)
			}
			if got := list[0].first(); got != tc.want[0] {
				t.Errorf("first() = %q; want %q", got, tc.want[0])
			}
		})
	}
}

// slurm is what srun gives rank 1 of a 4-task step on three nodes, and a secret.
var slurm = []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_JOB_ID=12345", "SLURM_STEP_ID=0",
	"SLURM_STEP_NODELIST=node[07-08,10]", "GOCOLL_SECRET=s"}

func slurmWith(extra ...string) []string { return append(append([]string{}, slurm...), extra...) }

func TestResolveSlurmMaster(t *testing.T) {
	// 61440 + (12345*97 + step) mod 4096: 12345 mod 4096 = 57, 57*97 = 5529 = 1433 mod 4096.
	for _, tc := range []struct {
		name string
		env  []string
		opts []Option
		want string // l.master
	}{
		{"derived", slurm, nil, "node07:62873"},
		{"second step", slurmWith("SLURM_STEP_ID=2"), nil, "node07:62875"},
		{"next job", slurmWith("SLURM_JOB_ID=12346"), nil, "node07:62970"}, // 58*97 = 5626 = 1530 mod 4096
		{"old spellings", []string{"SLURM_PROCID=1", "SLURM_NPROCS=4", "SLURM_JOBID=12345", "SLURM_STEPID=1",
			"SLURM_STEP_NODELIST=node07", "GOCOLL_SECRET=s"}, nil, "node07:62874"},
		{"several groups", slurmWith("SLURM_STEP_NODELIST=rack[2-3]-n[05-06],login1"), nil, "rack2-n05:62873"},
		{"explicit addr wins", slurmWith("MASTER_ADDR=10.1.1.1"), nil, "10.1.1.1:62873"},
		{"explicit port wins", slurmWith("MASTER_PORT=1234"), nil, "node07:1234"},
		{"explicit both win", slurmWith("MASTER_ADDR=h", "MASTER_PORT=1"), nil, "h:1"},
		{"WithMaster wins", slurm, []Option{WithMaster("m:2")}, "m:2"},
		{"rank 0 on the first node", slurmWith("SLURM_PROCID=0", "SLURMD_NODENAME=node07"), nil, "node07:62873"},
		{"srun --mpi=pmi2", slurmWith("PMI_RANK=1", "PMI_SIZE=4"), nil, "node07:62873"},
		{"one task needs no store", []string{"SLURM_PROCID=0", "SLURM_NTASKS=1", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0",
			"SLURM_STEP_NODELIST=n1"}, nil, ""},
		{"WithStore needs no master", slurm, []Option{WithStore(memstore.New())}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := resolve(buildOptions(tc.opts), envOf(tc.env...))
			if err != nil {
				t.Fatal(err)
			}
			if l.master != tc.want {
				t.Errorf("master = %q; want %q", l.master, tc.want)
			}
		})
	}
}

func TestResolveSlurmErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want []string // substrings of the error
	}{
		{"no nodelist", []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "GOCOLL_SECRET=s"},
			[]string{"SLURM_STEP_NODELIST is not set", "MASTER_ADDR"}},
		{"bad nodelist", slurmWith("SLURM_STEP_NODELIST=node[1-"), []string{"SLURM_STEP_NODELIST: hostlist", "no matching ']'", "MASTER_ADDR"}},
		{"no job id", []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_STEP_ID=0", "SLURM_STEP_NODELIST=n1", "GOCOLL_SECRET=s"},
			[]string{"SLURM_JOB_ID is not set", "MASTER_PORT"}},
		{"no step id", []string{"SLURM_PROCID=1", "SLURM_NTASKS=4", "SLURM_JOB_ID=1", "SLURM_STEP_NODELIST=n1", "GOCOLL_SECRET=s"},
			[]string{"SLURM_STEP_ID is not set"}},
		{"bad step id", slurmWith("SLURM_STEP_ID=x"), []string{`SLURM_STEP_ID="x" is not a Slurm id`}},
		{"rank 0 elsewhere", slurmWith("SLURM_PROCID=0", "SLURMD_NODENAME=node08"),
			[]string{"rank 0 runs on node08, not on node07", "MASTER_ADDR=node08"}},
		{"no secret", slurm[:len(slurm)-1],
			[]string{"GOCOLL_SECRET is not set", "node07:62873", "GOCOLL_SECRET=$(openssl rand -hex 16) srun", "or launch with srun --mpi=pmi2", "with nothing exported"}},
		// Under mpiexec inside an srun step, SLURM_* describe the step
		// that started the launcher, not this rank: nothing is derived.
		{"hydra inside a step", []string{"PMI_RANK=3", "PMI_SIZE=4", "SLURM_PROCID=0", "SLURM_NTASKS=1", "SLURM_JOB_ID=1",
			"SLURM_STEP_ID=0", "SLURM_STEP_NODELIST=n1", "GOCOLL_SECRET=s"}, []string{"4 ranks need a store: set MASTER_ADDR"}},
		{"mpirun inside an allocation", slurmWith("OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4"),
			[]string{"Open MPI started rank 1 of 4 without MASTER_ADDR and MASTER_PORT"}},
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

// The documented port range, and distinct ports for nearby jobs and steps.
func TestSlurmPort(t *testing.T) {
	for _, j0 := range []uint64{1, 4090, 1<<32 - 20} {
		seen := map[uint64]string{}
		for j := j0; j < j0+42; j++ {
			for s := uint64(0); s < 97; s++ {
				p := slurmPort(j, s)
				if p < 61440 || p > 65535 {
					t.Fatalf("job %d step %d: port %d outside 61440..65535", j, s, p)
				}
				if prev, ok := seen[p]; ok {
					t.Fatalf("job %d step %d: port %d also went to %s", j, s, p, prev)
				}
				seen[p] = fmt.Sprintf("job %d step %d", j, s)
			}
		}
	}
}

func TestResolveOpenMPIError(t *testing.T) {
	ompi := []string{"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_LOCAL_SIZE=2"}
	for _, tc := range []struct {
		name      string
		env       []string
		opts      []Option
		without   string // the missing variables, as the error lists them
		wantFlags string // exactly the flags the error asks for
	}{
		{"nothing passed", ompi, nil, "MASTER_ADDR, MASTER_PORT and GOCOLL_SECRET",
			"-x MASTER_ADDR=<rank 0's host> -x MASTER_PORT=<a free port, e.g. 29500> -x GOCOLL_SECRET=$(openssl rand -hex 16)"},
		{"one node", []string{"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_LOCAL_SIZE=4"}, nil,
			"MASTER_ADDR, MASTER_PORT and GOCOLL_SECRET",
			"-x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=<a free port, e.g. 29500> -x GOCOLL_SECRET=$(openssl rand -hex 16)"},
		{"secret only", append([]string{"MASTER_ADDR=h", "MASTER_PORT=1"}, ompi...), nil, "GOCOLL_SECRET",
			"-x GOCOLL_SECRET=$(openssl rand -hex 16)"},
		{"port only", append([]string{"MASTER_ADDR=h", "GOCOLL_SECRET=s"}, ompi...), nil, "MASTER_PORT",
			"-x MASTER_PORT=<a free port, e.g. 29500>"},
		{"empty addr", append([]string{"MASTER_ADDR=", "MASTER_PORT=1", "GOCOLL_SECRET=s"}, ompi...), nil, "MASTER_ADDR",
			"-x MASTER_ADDR=<rank 0's host>"},
		{"addr and secret", append([]string{"MASTER_PORT=1"}, ompi...), nil, "MASTER_ADDR and GOCOLL_SECRET",
			"-x MASTER_ADDR=<rank 0's host> -x GOCOLL_SECRET=$(openssl rand -hex 16)"},
		{"WithMaster", ompi, []Option{WithMaster("h:1")}, "GOCOLL_SECRET", "-x GOCOLL_SECRET=$(openssl rand -hex 16)"},
		{"WithSecret", ompi, []Option{WithSecret([]byte("s"))}, "MASTER_ADDR and MASTER_PORT",
			"-x MASTER_ADDR=<rank 0's host> -x MASTER_PORT=<a free port, e.g. 29500>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(buildOptions(tc.opts), envOf(tc.env...))
			if err == nil {
				t.Fatal("no error")
			}
			want := "dispatch: Open MPI started rank 1 of 4 without " + tc.without + ": mpirun passes on only the variables " +
				"named with -x; add " + tc.wantFlags + " to mpirun's command line (-x NAME alone passes on mpirun's own value)"
			if err.Error() != want {
				t.Errorf("err = %v\nwant  %s", err, want)
			}
		})
	}
	// Everything passed, or a job of one, or a store given: no complaint.
	for _, env := range [][]string{append(append([]string{}, master...), ompi...),
		{"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=1"}} {
		if _, err := resolve(buildOptions(nil), envOf(env...)); err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
	if _, err := resolve(buildOptions([]Option{WithStore(memstore.New())}), envOf(ompi...)); err != nil {
		t.Errorf("WithStore: %v", err)
	}
}
