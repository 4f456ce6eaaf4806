package launchers

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cluster is a one-node Slurm cluster on loopback that a test started:
// its own munged, slurmctld and slurmd, in a temporary directory, on
// free ports. Nothing of it outlives the test.
type cluster struct {
	dir  string
	conf string
}

// startCluster starts the daemons, waits for the node to be idle, and
// stops them (by process, then their step daemons) when t ends. It skips
// t where Slurm or munge is absent or the test does not run as root
// (slurmd must, to start tasks as the submitting user).
func startCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Slurm cluster")
	}
	for _, tool := range []string{"munged", "mungekey", "slurmctld", "slurmd", "srun", "sinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (apt-get install -y slurm-wlm munge)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("slurmd must run as root")
	}
	// Unix socket paths are short: t.TempDir can be too deep for one.
	dir, err := os.MkdirTemp("", "gocoll-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{dir: dir, conf: filepath.Join(dir, "slurm.conf")}
	for _, d := range []string{"state", "spool"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	key := filepath.Join(dir, "munge.key")
	if out, err := exec.Command("mungekey", "--create", "--keyfile", key).CombinedOutput(); err != nil {
		t.Fatalf("mungekey: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "munge.sock")
	c.daemon(t, "munged", "--foreground", "--force", "--socket", sock, "--key-file", key,
		"--pid-file", filepath.Join(dir, "munged.pid"), "--seed-file", filepath.Join(dir, "munged.seed"),
		"--log-file", filepath.Join(dir, "munged.log"))
	waitFor(t, 10*time.Second, "munged's socket", func() bool { _, err := os.Stat(sock); return err == nil })

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	ctldPort, dPort := freeTCPPort(t), freeTCPPort(t)
	conf := fmt.Sprintf(`ClusterName=gocolltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=%d
SlurmdPort=%d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=%[3]s/munge.sock
CredType=cred/munge
StateSaveLocation=%[3]s/state
SlurmdSpoolDir=%[3]s/spool
SlurmctldPidFile=%[3]s/slurmctld.pid
SlurmdPidFile=%[3]s/slurmd.pid
SlurmctldLogFile=%[3]s/slurmctld.log
SlurmdLogFile=%[3]s/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
NodeName=%[4]s NodeAddr=127.0.0.1 CPUs=%[5]d State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
`, ctldPort, dPort, dir, host, runtime.NumCPU())
	if err := os.WriteFile(c.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	c.daemon(t, "slurmctld", "-D", "-f", c.conf)
	c.daemon(t, "slurmd", "-D", "-f", c.conf, "-N", host)
	waitFor(t, 30*time.Second, "the node to be idle (sinfo)", func() bool {
		out, err := c.command("sinfo", "-h", "-o", "%t").Output()
		return err == nil && strings.TrimSpace(string(out)) == "idle"
	})
	return c
}

// daemon starts a daemon in the foreground as a child of the test, and
// stops it when t ends: SIGTERM, then SIGKILL after 10 s.
func (c *cluster) daemon(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(cleanEnv(), "SLURM_CONF="+c.conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, out.String())
			if log, err := os.ReadFile(filepath.Join(c.dir, name+".log")); err == nil {
				t.Logf("%s's log (tail):\n%s", name, tail(string(log), 40))
			}
		}
	})
}

// command is a Slurm client command for this cluster.
func (c *cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(cleanEnv(), "SLURM_CONF="+c.conf)
	return cmd
}

// srun runs srun with extra environment (beside SLURM_CONF) and returns
// its output.
func (c *cluster) srun(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	return run(t, append(cleanEnv(env...), "SLURM_CONF="+c.conf), "srun", args...)
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("waited %v for %s", d, what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// Under srun --mpi=pmi2 with nothing exported the ranks meet through
// PMI; plain srun derives the store's address and needs the secret,
// and says how to do without it.
func TestSrun(t *testing.T) {
	c := startCluster(t)
	hello := hello(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// 4 and 8 tasks on a node with fewer CPUs: --overcommit.
	t.Run("hello/pmi2", func(t *testing.T) {
		out, err := c.srun(t, nil, "--mpi=pmi2", "--overcommit", "-n", "4", hello)
		if err != nil {
			t.Fatalf("srun --mpi=pmi2 -n 4 hello: %v\n%s", err, out)
		}
		checkHello(t, out, 4)
	})
	t.Run("allreduce/pmi2", func(t *testing.T) {
		out, err := c.srun(t, []string{envChild + "=allreduce"}, "--mpi=pmi2", "--overcommit", "-n", "4", exe)
		if err != nil {
			t.Fatalf("srun --mpi=pmi2 -n 4: %v\n%s", err, out)
		}
		checkAllreduce(t, out, 4)
	})
	t.Run("hello/pmi2/PMI-1", func(t *testing.T) {
		out, err := c.srun(t, []string{"GOCOLL_PMI=1"}, "--mpi=pmi2", "--overcommit", "-n", "3", hello)
		if err != nil {
			t.Fatalf("GOCOLL_PMI=1 srun --mpi=pmi2 -n 3 hello: %v\n%s", err, out)
		}
		checkHello(t, out, 3)
	})
	for _, v := range []int{1, 2} {
		t.Run("pmi-"+strconv.Itoa(v), func(t *testing.T) {
			out, err := c.srun(t, []string{envChild + "=pmi" + strconv.Itoa(v)}, "--mpi=pmi2", "--overcommit", "-n", "3", exe)
			if err != nil {
				t.Fatalf("srun --mpi=pmi2 -n 3: %v\n%s", err, out)
			}
			checkPMI(t, out, v, 3)
		})
	}
	t.Run("hello/plain", func(t *testing.T) {
		out, err := c.srun(t, []string{"GOCOLL_SECRET=launchers-test-secret"}, "--overcommit", "-n", "4", hello)
		if err != nil {
			t.Fatalf("GOCOLL_SECRET=... srun -n 4 hello: %v\n%s", err, out)
		}
		checkHello(t, out, 4)
	})
	t.Run("hello/plain/no-secret", func(t *testing.T) {
		out, err := c.srun(t, nil, "--overcommit", "-n", "2", hello)
		if err == nil {
			t.Fatalf("srun -n 2 hello without GOCOLL_SECRET succeeded:\n%s", out)
		}
		for _, want := range []string{"GOCOLL_SECRET is not set", "srun --mpi=pmi2", "nothing exported"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	// Rank 0 cannot bind MASTER_PORT: every rank says so at once, not at
	// the timeout.
	t.Run("rank0-fails", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		start := time.Now()
		out, err := c.srun(t, []string{"MASTER_PORT=" + port, "GOCOLL_TIMEOUT=60s"}, "--mpi=pmi2", "--overcommit", "-n", "3", hello)
		if err == nil {
			t.Fatalf("srun succeeded with MASTER_PORT taken:\n%s", out)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("the ranks took %v to fail", d)
		}
		for _, want := range []string{"rank 0 cannot serve the store", "rank 1: rank 0 failed", "rank 2: rank 0 failed", "address already in use"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("init-time/np8", func(t *testing.T) {
		out, err := c.srun(t, []string{envChild + "=allreduce"}, "--mpi=pmi2", "--overcommit", "-n", "8", exe)
		if err != nil {
			t.Fatalf("srun --mpi=pmi2 -n 8: %v\n%s", err, out)
		}
		reportInit(t, "srun --mpi=pmi2", checkAllreduce(t, out, 8))
	})
}
