package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/affinity"
	"github.com/gocoll/gocoll/store"
)

// launched reports whether a launcher started this process as one rank of
// a job: torchrun and gocollrun set RANK and WORLD_SIZE, Open MPI
// OMPI_COMM_WORLD_RANK, MPICH's Hydra PMI_RANK, srun SLURM_PROCID with a
// step id (sbatch scripts have SLURM_PROCID too, but are not a rank).
func launched() bool {
	has := func(k string) bool { _, ok := os.LookupEnv(k); return ok }
	return (has("RANK") && has("WORLD_SIZE")) || has("OMPI_COMM_WORLD_RANK") || has("PMI_RANK") ||
		has("PMIX_RANK") || (has("SLURM_PROCID") && has("SLURM_STEP_ID"))
}

// killGrace is how long the launcher lets the other ranks finish after one
// failed before it kills them: they would otherwise wait for the dead rank
// until their timeout.
const killGrace = 3 * time.Second

// launch starts np copies of this binary as the ranks of one job on this
// machine, with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), a fresh GOCOLL_SECRET and
// GOMAXPROCS at their share of the CPUs (unless set), the way gocollrun
// does, and waits for them. The launcher serves the
// rendezvous store itself (GOCOLL_LAUNCHER_STORE=1 tells dispatch.Init), on
// a port the kernel picks, so no rank races another program for a port.
func launch(ctx context.Context, np int, bind affinity.Mode, args []string, stdout, stderr io.Writer) error {
	plan, err := affinity.Plan(bind, np)
	if err != nil {
		return fmt.Errorf("-bind %s: %w", bind, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this binary to start the ranks: %w", err)
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	secret := hex.EncodeToString(raw)
	srv, err := store.Listen("127.0.0.1:0", []byte(secret))
	if err != nil {
		return fmt.Errorf("serving the rendezvous store: %w", err)
	}
	defer srv.Close()
	_, port, err := net.SplitHostPort(srv.Addr())
	if err != nil {
		return err
	}
	base, _, err := affinity.Procs(os.Environ(), np)
	if err != nil {
		return err
	}
	cmds := make([]*exec.Cmd, np)
	for r := range cmds {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(base[:len(base):len(base)],
			"RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(np),
			"LOCAL_RANK="+strconv.Itoa(r), "LOCAL_WORLD_SIZE="+strconv.Itoa(np),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT="+port,
			dispatch.EnvLauncherStore+"=1", dispatch.EnvSecret+"="+secret)
		if r == 0 {
			cmd.Stdout = stdout
		}
		cmd.Stderr = stderr
		// Our own process group: a ^C reaches the ranks through us only,
		// and we can kill all of a rank's children at once.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmds[r] = cmd
	}
	for r, cmd := range cmds {
		cpu := -1
		if plan != nil {
			cpu = plan[r]
		}
		if err := affinity.Start(cmd, cpu); err != nil {
			for _, c := range cmds[:r] {
				c.Process.Kill()
				c.Wait()
			}
			return fmt.Errorf("starting rank %d: %w", r, err)
		}
	}
	type exit struct {
		rank int
		err  error
	}
	exits := make(chan exit, np)
	for r, cmd := range cmds {
		go func() { exits <- exit{r, cmd.Wait()} }()
	}
	var once sync.Once
	exited := make([]bool, np)
	killAll := func(sig syscall.Signal) {
		for r, c := range cmds {
			if !exited[r] {
				syscall.Kill(-c.Process.Pid, sig)
			}
		}
	}
	var firstErr error
	var timer <-chan time.Time
	done := ctx.Done()
	for left := np; left > 0; {
		select {
		case e := <-exits:
			left--
			exited[e.rank] = true
			if e.err != nil && firstErr == nil {
				firstErr = e.err
				var ee *exec.ExitError
				if errors.As(e.err, &ee) && ee.ExitCode() > 0 {
					firstErr = exitError(ee.ExitCode())
				}
				once.Do(func() { timer = time.After(killGrace) })
			}
		case <-timer:
			timer = nil
			killAll(syscall.SIGKILL)
		case <-done:
			done = nil
			killAll(syscall.SIGTERM)
			once.Do(func() { timer = time.After(killGrace) })
			if firstErr == nil {
				firstErr = ctx.Err()
			}
		}
	}
	return firstErr
}
