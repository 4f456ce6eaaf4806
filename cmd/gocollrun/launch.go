package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/internal/affinity"
)

// rankSpec is one rank to start.
type rankSpec struct {
	rank int
	argv []string
	env  []string
	cpu  int // the CPU to bind the rank to, or -1
}

// proc is one started rank.
type proc struct {
	rankSpec
	cmd    *exec.Cmd
	outs   []*lineWriter
	exited bool
}

type exitInfo struct {
	p    *proc
	code int    // exit code, or 128+signal
	how  string // "exit status 3", "signal: killed"
}

// onFailure says what a rank that fails does to the others.
type onFailure string

const (
	// failStop stops the other ranks, as torchrun and mpirun do by
	// default.
	failStop onFailure = "stop"
	// failContinue leaves the other ranks running, as MPICH's
	// -disable-auto-cleanup and Open MPI's --enable-recovery do, so that
	// they can go on without it (dispatch.Comm.Shrink).
	failContinue onFailure = "continue"
)

// storeHold keeps node 0's gocollrun serving the store, after its own
// ranks have exited, for the ranks of other nodes still connected to it.
type storeHold struct {
	idle func() <-chan struct{} // store.Server.Idle
	max  time.Duration          // the longest hold; 0: no bound
}

// launch starts the ranks, supervises them and returns the exit code: 0
// when every rank exited 0; else the code of the first rank that failed
// before gocollrun got a signal (128+signal for a rank killed by one);
// else 128+the signal gocollrun got. With hold, once every rank has
// exited (and its process group is killed), launch waits until
// hold.idle's channel closes, hold.max passes or a signal comes, unless a
// signal stopped the ranks or, under failStop, a rank failed; a signal
// that ends the wait sets the code only when no rank failed.
func launch(ctx context.Context, specs []rankSpec, prefix bool, grace time.Duration, policy onFailure, hold *storeHold, stdout, stderr io.Writer) int {
	var outMu sync.Mutex // whole lines from different ranks never interleave
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(stderr, "gocollrun: "+format+"\n", args...)
	}

	// Signals are caught before any rank starts, so none is lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)

	procs := make([]*proc, 0, len(specs))
	// Whatever happens, every rank's process group dies before we return
	// (or hold the store for other nodes): that takes grandchildren the
	// ranks left behind too.
	killGroups := func() {
		for _, p := range procs {
			unix.Kill(-p.cmd.Process.Pid, unix.SIGKILL)
		}
		procs = procs[:0]
	}
	defer func() { killGroups() }()

	exits := make(chan exitInfo, len(specs))
	for _, s := range specs {
		p := &proc{rankSpec: s}
		cmd := exec.CommandContext(ctx, s.argv[0], s.argv[1:]...)
		cmd.Env = s.env
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Setpgid:   true,         // signals reach the rank's children too
			Pdeathsig: unix.SIGKILL, // if gocollrun dies, so does the rank
		}
		if prefix {
			tag := []byte(fmt.Sprintf("[rank %d] ", s.rank))
			o, e := &lineWriter{mu: &outMu, dst: stdout, prefix: tag}, &lineWriter{mu: &outMu, dst: stderr, prefix: tag}
			cmd.Stdout, cmd.Stderr, p.outs = o, e, []*lineWriter{o, e}
			// A grandchild holding the pipe open must not keep us from
			// seeing that the rank exited.
			cmd.WaitDelay = 500 * time.Millisecond
		} else {
			cmd.Stdout, cmd.Stderr = stdout, stderr
		}
		p.cmd = cmd
		if err := affinity.Start(cmd, s.cpu); err != nil {
			say("starting rank %d (%s): %v; stopping the other ranks", s.rank, s.argv[0], err)
			stopAll(procs, grace, exits)
			if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
				return 127
			}
			return 1
		}
		procs = append(procs, p)
		go func() {
			err := cmd.Wait()
			for _, w := range p.outs {
				w.Flush()
			}
			exits <- exitStatus(p, err)
		}()
	}

	code := 0
	live := len(procs)
	stopping := false
	signalled := 0
	var failed []exitInfo // with -on-failure=continue
	var kill <-chan time.Time
	for live > 0 {
		select {
		case e := <-exits:
			live--
			e.p.exited = true
			if e.code == 0 || stopping {
				continue
			}
			if code == 0 {
				code = e.code
			}
			if policy == failContinue {
				failed = append(failed, e)
				if live > 0 {
					say("rank %d (pid %d) failed: %s; the other ranks go on (-on-failure=continue; %d still running)", e.p.rank, e.p.cmd.Process.Pid, e.how, live)
				} else {
					say("rank %d (pid %d) failed: %s", e.p.rank, e.p.cmd.Process.Pid, e.how)
				}
				continue
			}
			stopping = true
			if live > 0 {
				say("rank %d (pid %d) failed: %s; stopping the other ranks", e.p.rank, e.p.cmd.Process.Pid, e.how)
				signalAll(procs, unix.SIGTERM)
				kill = time.After(grace)
			} else {
				say("rank %d (pid %d) failed: %s", e.p.rank, e.p.cmd.Process.Pid, e.how)
			}
		case s := <-sigs:
			signalled++
			if signalled == 1 {
				say("forwarding %v to the ranks (again to kill them)", s)
				signalAll(procs, s.(unix.Signal))
				stopping = true
				if code == 0 {
					code = 128 + int(s.(unix.Signal))
				}
			} else {
				signalAll(procs, unix.SIGKILL)
			}
		case <-kill:
			signalAll(procs, unix.SIGKILL)
		}
	}
	if signalled > 0 && allZero(procs) {
		// Every rank handled the signal and exited cleanly.
		return 0
	}
	if len(failed) > 0 {
		// The failures may lie far apart in a long output: name them all
		// where the job ends.
		list := make([]string, len(failed))
		for i, e := range failed {
			list[i] = fmt.Sprintf("rank %d (%s)", e.p.rank, e.how)
		}
		say("%d of %d rank(s) failed: %s; exiting %d, rank %d's code", len(failed), len(procs), strings.Join(list, ", "), code, failed[0].p.rank)
	}
	if hold != nil && signalled == 0 && (policy == failContinue || code == 0) {
		killGroups()
		if s, ok := holdStore(hold, sigs, say); !ok && code == 0 {
			code = 128 + int(s)
		}
	}
	return code
}

// holdStore waits until no rank of another node is connected to the store
// any more, hold.max passes, or a signal comes (which it returns, with
// false). It says what it waits for only when the wait lasts: at the end
// of a job the other nodes' ranks are usually gone within moments.
func holdStore(hold *storeHold, sigs <-chan os.Signal, say func(string, ...any)) (unix.Signal, bool) {
	idle := hold.idle()
	notice := time.NewTimer(time.Second)
	defer notice.Stop()
	var bound <-chan time.Time
	deadline := time.Now().Add(hold.max)
	if hold.max > 0 {
		t := time.NewTimer(hold.max)
		defer t.Stop()
		bound = t.C
	}
	for {
		select {
		case <-idle:
			return 0, true
		case <-notice.C:
			limit := "no time limit"
			if hold.max > 0 {
				limit = fmt.Sprintf("for at most %v more", time.Until(deadline).Round(time.Second))
			}
			say("this node's ranks have exited; serving the store while ranks of other nodes are connected to it (%s; SIGINT or SIGTERM stops it)", limit)
		case <-bound:
			say("ranks of other nodes still use the store after -store-linger %v; closing it under them", hold.max)
			return 0, true
		case s := <-sigs:
			say("got %v; closing the store under the ranks of other nodes still connected to it", s)
			return s.(unix.Signal), false
		}
	}
}

// allZero reports whether every rank exited with status 0.
func allZero(procs []*proc) bool {
	for _, p := range procs {
		if p.cmd.ProcessState == nil || !p.cmd.ProcessState.Success() {
			return false
		}
	}
	return true
}

// signalAll sends sig to the process group of every rank still running.
func signalAll(procs []*proc, sig unix.Signal) {
	for _, p := range procs {
		if !p.exited {
			unix.Kill(-p.cmd.Process.Pid, sig)
		}
	}
}

// stopAll stops already started ranks after a failed start.
func stopAll(procs []*proc, grace time.Duration, exits chan exitInfo) {
	signalAll(procs, unix.SIGTERM)
	deadline := time.After(grace)
	for n := len(procs); n > 0; {
		select {
		case e := <-exits:
			e.p.exited = true
			n--
		case <-deadline:
			signalAll(procs, unix.SIGKILL)
			deadline = nil
		}
	}
}

func exitStatus(p *proc, err error) exitInfo {
	st := p.cmd.ProcessState
	if st == nil {
		return exitInfo{p: p, code: 1, how: err.Error()}
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitInfo{p: p, code: 128 + int(ws.Signal()), how: "killed by signal " + ws.Signal().String()}
	}
	if st.ExitCode() != 0 {
		return exitInfo{p: p, code: st.ExitCode(), how: fmt.Sprintf("exit code %d", st.ExitCode())}
	}
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return exitInfo{p: p, code: 1, how: err.Error()}
	}
	return exitInfo{p: p, code: 0}
}

// lineWriter writes whole lines to dst, each with prefix, under a lock
// shared by every rank's writers.
type lineWriter struct {
	mu     *sync.Mutex
	dst    io.Writer
	prefix []byte
	buf    []byte // a partial line
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	i := bytes.LastIndexByte(w.buf, '\n')
	if i < 0 {
		if len(w.buf) < 64<<10 {
			return len(p), nil
		}
		i = len(w.buf) - 1 // an endless line: pass it on in pieces
	}
	var out []byte
	for _, line := range bytes.SplitAfter(w.buf[:i+1], []byte{'\n'}) {
		if len(line) > 0 {
			out = append(append(out, w.prefix...), line...)
		}
	}
	if out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	w.buf = append(w.buf[:0], w.buf[i+1:]...)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.dst.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes a last line that had no newline.
func (w *lineWriter) Flush() {
	if len(w.buf) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dst.Write(append(append(append([]byte{}, w.prefix...), w.buf...), '\n'))
	w.buf = nil
}
