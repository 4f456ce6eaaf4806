package dispatch

import (
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
